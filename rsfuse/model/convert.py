"""``rsfuse convert SRC DST``: write any readable MF-RSVLM checkpoint layout as an rsfuse folder.

SRC may be an rsfuse folder, a released MF-RSVLM folder (``model_type`` "mfrsvlm" / "vhm") or a transformers
LLaVA folder (llava-hf layout: ``LlavaForConditionalGeneration.save_pretrained``, ``llava-hf/llava-1.5-7b-hf``),
which is written as the global-only LLaVA-1.5 model it is (``detail=False``, image spliced at its in-vocabulary image
token, select layer from ``vision_feature_layer``); the layout is read from ``SRC/config.json``. With
``--vision CLIP_DIR`` SRC is instead an HF Llama/Vicuna folder (or, with ``--llava``, a LLaVA-1.5 folder) assembled
with that CLIP tower, new modules initialised (``--seed``). The tokenizer (``tokenizer.model``) is copied when SRC
has one.

An expected error (a folder or file that cannot be read as a checkpoint, a config field of the wrong type, an
unwritable destination) prints one line naming the file and key and exits with status 2; ``--debug`` or
``RSFUSE_DEBUG=1`` adds the traceback.
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
    """Load ``source`` with ``MFRSVLM.from_pretrained`` (``from_parts`` when ``vision`` is given or ``source`` is a
    llava-hf folder) and save it."""
    from rsfuse.checkpoints.io import read_json  # noqa: PLC0415  (keeps `rsfuse --help` light)
    from rsfuse.checkpoints.llava_hf import is_llava_hf_config  # noqa: PLC0415
    from rsfuse.model.mfrsvlm import MFRSVLM  # noqa: PLC0415

    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"convert: destination {destination} is the source folder; choose another folder")
    llava_hf = vision is None and (source / "config.json").is_file() and is_llava_hf_config(read_json(source / "config.json"))
    if llava_hf:
        torch.manual_seed(seed)
        model = MFRSVLM.from_parts(vision=None, llava=source, dtype=dtype)
    elif vision is None:
        if llava:
            raise ValueError(f"convert: {source} is not a llava-hf folder; a liuhaotian LLaVA folder needs --vision CLIP_DIR")
        model = MFRSVLM.from_pretrained(source, dtype=dtype)
    else:
        torch.manual_seed(seed)
        parts = {"llava": source} if llava else {"llm": source}
        model = MFRSVLM.from_parts(vision=vision, dtype=dtype, **parts)
    return model.save_pretrained(destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfuse convert", description=__doc__.splitlines()[0])
    parser.add_argument(
        "source", help="checkpoint folder (rsfuse, released MF-RSVLM, llava-hf, or Llama/LLaVA with --vision)"
    )
    parser.add_argument("destination", help="rsfuse folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating weights (default: keep)")
    parser.add_argument("--vision", default=None, help="HF CLIP folder: assemble SRC (Llama or LLaVA) with this tower")
    parser.add_argument(
        "--llava", action="store_true", help="SRC is a LLaVA-1.5 folder (liuhaotian: needs --vision; llava-hf: optional)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for newly initialised modules (with --vision)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an expected error")
    args = parser.parse_args(argv)
    from rsfuse.recipes.errors import debug_requested, expected_errors, report_expected  # noqa: PLC0415

    debug = args.debug or debug_requested()

    try:
        written = convert(
            args.source,
            args.destination,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            vision=args.vision,
            llava=args.llava,
            seed=args.seed,
        )
    except (*expected_errors(), ValueError) as error:
        return report_expected("rsfuse convert", error, debug=debug)
    except OSError as error:
        if error.filename is None:
            raise
        return report_expected("rsfuse convert", error, debug=debug)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
