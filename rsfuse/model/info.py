"""``rsfuse info --model ID_OR_DIR [--quantization Q]``: parameters and device bytes per part of a model, computed on
the meta device from its config files alone (a Hub id downloads only those; no weight is read). GB = 1e9 bytes.

``--preset NAME`` sizes a named ``MFRSVLMConfig`` preset instead (``paper`` = MF-RSVLM-7B). ``--dtype`` is the load
dtype of what stays full precision (default bf16, what a GPU loads); ``--json`` prints the figures as JSON.
"""

import argparse
import json
import sys

import torch

from rsfuse.model.footprint import footprint
from rsfuse.options import QUANTIZATIONS

__all__ = ["main", "info_table"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GB = 1e9


def info_table(rows, *, dtype_name: str, scheme: str | None, title: str) -> str:
    """The per-part table: parameters, GB in the load dtype, GB with the scheme."""
    scheme_column = scheme or dtype_name
    lines = [title, f"{'part':<16}{'parameters':>16}{dtype_name + ' GB':>12}{scheme_column + ' GB':>12}"]
    for row in rows:
        lines.append(f"{row.part:<16}{row.parameters:>16,}{row.full_bytes / GB:>12.3f}{row.device_bytes / GB:>12.3f}")
    total = [sum(getattr(row, field) for row in rows) for field in ("parameters", "full_bytes", "device_bytes")]
    lines.append(f"{'total':<16}{total[0]:>16,}{total[1] / GB:>12.3f}{total[2] / GB:>12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfuse info", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder or Hub repository id (only its config files are read)")
    source.add_argument("--preset", help="an MFRSVLMConfig preset instead of a model (paper = MF-RSVLM-7B)")
    parser.add_argument("--revision", default=None, help="Hub revision when --model is an id")
    parser.add_argument("--quantization", default=None, choices=QUANTIZATIONS)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of the full-precision parts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    from rsfuse.model.config import PRESETS, MFRSVLMConfig  # noqa: PLC0415

    if args.preset is not None:
        if args.preset not in PRESETS:
            raise ValueError(f"--preset {args.preset!r}: unknown (known: {', '.join(PRESETS)})")
        config, name = getattr(MFRSVLMConfig, args.preset)(), f"preset {args.preset}"
    else:
        from rsfuse.checkpoints.formats import read_model_config  # noqa: PLC0415
        from rsfuse.checkpoints.hub import resolve_model  # noqa: PLC0415

        resolved = resolve_model(args.model, revision=args.revision, need="processor")
        config, name = MFRSVLMConfig.from_dict(read_model_config(resolved.path)), resolved.describe()
    rows = footprint(config, scheme=args.quantization, dtype=DTYPES[args.dtype])
    if args.json:
        print(json.dumps({"model": name, "dtype": args.dtype, "quantization": args.quantization,
                          "parts": [row.__dict__ for row in rows]}, indent=2))
        return 0
    title = (f"{name}: decoder linears in {args.quantization or args.dtype}, the rest in {args.dtype} "
             "(meta device, no weight read; GB = 1e9 bytes)")
    print(info_table(rows, dtype_name=args.dtype, scheme=args.quantization, title=title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
