"""``rsfuse convert SRC DST``: write any readable MF-RSVLM checkpoint layout as an rsfuse folder.

SRC may be an rsfuse folder or a released MF-RSVLM folder (``model_type`` "mfrsvlm" / "vhm"); the layout is read
from ``SRC/config.json``. With ``--vision CLIP_DIR`` SRC is instead an HF Llama/Vicuna folder (or, with
``--llava``, a LLaVA-1.5 folder) assembled with that CLIP tower, new modules initialised (``--seed``).
The tokenizer (``tokenizer.model``) is copied when SRC has one.
"""

import argparse
import sys
from pathlib import Path

import torch

__all__ = ["convert", "main"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(
    source: str | Path,
    destination: str | Path,
    *,
    dtype: torch.dtype | None = None,
    vision: str | Path | None = None,
    llava: bool = False,
    seed: int = 0,
) -> Path:
    """Load ``source`` with ``MFRSVLM.from_pretrained`` (or ``from_parts`` when ``vision`` is given) and save it."""
    from rsfuse.model.mfrsvlm import MFRSVLM  # noqa: PLC0415  (keeps `rsfuse --help` light)

    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"convert: destination {destination} is the source folder; choose another folder")
    if vision is None:
        model = MFRSVLM.from_pretrained(source, dtype=dtype)
    else:
        torch.manual_seed(seed)
        parts = {"llava": source} if llava else {"llm": source}
        model = MFRSVLM.from_parts(vision=vision, dtype=dtype, **parts)
    return model.save_pretrained(destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfuse convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint folder (rsfuse, released MF-RSVLM, or Llama/LLaVA with --vision)")
    parser.add_argument("destination", help="rsfuse folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating weights (default: keep)")
    parser.add_argument("--vision", default=None, help="HF CLIP folder: assemble SRC (Llama or LLaVA) with this tower")
    parser.add_argument("--llava", action="store_true", help="with --vision: SRC is a LLaVA-1.5 folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for newly initialised modules (with --vision)")
    args = parser.parse_args(argv)
    if args.llava and args.vision is None:
        parser.error("--llava needs --vision CLIP_DIR")
    from rsfuse.checkpoints.io import CheckpointError  # noqa: PLC0415

    try:
        written = convert(
            args.source,
            args.destination,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            vision=args.vision,
            llava=args.llava,
            seed=args.seed,
        )
    except (CheckpointError, ValueError) as error:
        print(f"rsfuse convert: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
