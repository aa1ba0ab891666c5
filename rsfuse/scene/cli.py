"""``rsfuse scene --model DIR --image SCENE --question TEXT --out DIR``: one question about a whole raster.

Options: ``--kind`` existence | count | grounding | free-form (default: from the question's wording,
`rsfuse.scene.answers`), ``--gsd`` (map units per pixel; default native), ``--tile-size`` (model pixels; default
the model's input size), ``--overlap`` (fraction of a tile; default 0 for counts, 0.25 otherwise), ``--bands R,G,B``
(0-based), ``--batch-size``, ``--max-new-tokens``, ``--max-scene-pixels``, ``--overwrite`` (discard answers of
another run in OUT instead of refusing), ``--dry-run`` (print the tiles, how many are all nodata, and an estimate
of the time from one timed batch; nothing written). Under ``torchrun --nproc_per_node N`` the tiles are shared
across the processes and one set of outputs is written. A bad input is one line with exit status 2.
"""

import argparse
import sys

import torch

from rsfuse.scene.reading import DEFAULT_MAX_SCENE_PIXELS

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _bands(text: str) -> tuple[int, int, int]:
    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 0:
        raise argparse.ArgumentTypeError(f"--bands {text!r}: expected three 0-based band indices R,G,B")
    return bands  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    from rsfuse.scene.answers import KINDS  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="rsfuse scene", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder (any layout MFRSVLM.from_pretrained reads)")
    p.add_argument("--image", required=True, help="GeoTIFF/COG, JPEG 2000, PNG or JPEG scene")
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True, help="output folder (answers resume from it)")
    p.add_argument("--kind", choices=KINDS, default=None, help="default: from the question's wording")
    p.add_argument("--gsd", type=float, default=None, help="ground sample distance of the tiles (default native)")
    p.add_argument("--tile-size", type=int, default=None, help="model pixels per tile side (default: input size)")
    p.add_argument("--overlap", type=float, default=None, help="fraction of a tile (default 0 count, else 0.25)")
    p.add_argument("--bands", type=_bands, default=None, help="three 0-based bands R,G,B (default: colour interp.)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-scene-pixels", type=int, default=DEFAULT_MAX_SCENE_PIXELS)
    p.add_argument("--template", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--overwrite", action="store_true", help="discard another run's answers in --out")
    p.add_argument("--dry-run", action="store_true", help="print the tiles and an estimated time; write nothing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _dry_run(model, processor, args) -> None:
    from rsfuse.scene.answering import _kind_of, plan_scene, time_one_batch  # noqa: PLC0415
    from rsfuse.scene.reading import SceneRaster  # noqa: PLC0415

    kind = _kind_of(args.question, args.kind)
    with SceneRaster(args.image, bands=args.bands, max_scene_pixels=args.max_scene_pixels) as raster:
        plan = plan_scene(raster, tile_size=args.tile_size or processor.image_size, kind=kind, gsd=args.gsd,
                          overlap=args.overlap)
        size = plan.tile_size
        empty = sum(not raster.valid_any(t.x, t.y, t.width, t.height, size, size) for t in plan.tiles)
        per_tile = time_one_batch(model, processor, raster, plan, args.question, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens)
        info = raster.info
    answered = len(plan.tiles) - empty
    print(f"scene {info.width}x{info.height} px, bands {list(info.bands)}, native GSD {info.native_gsd:g}, "
          f"{'georeferenced' if info.georeferenced else 'pixel coordinates'}")
    print(f"kind {kind}; {len(plan.tiles)} tiles ({plan.rows} rows x {plan.cols} cols) of {plan.side} native px "
          f"-> {plan.tile_size} px at GSD {plan.gsd:g}, overlap {plan.overlap:g}; {empty} all nodata, "
          f"{answered} to answer")
    if per_tile is not None:
        print(f"estimated time: {answered * per_tile:.0f} s ({per_tile:.3f} s per tile, timed on one batch)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from rsfuse.eval.ranks import RankGroup, finish, launch  # noqa: PLC0415
    from rsfuse.model.mfrsvlm import MFRSVLM  # noqa: PLC0415
    from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415
    from rsfuse.recipes.errors import debug_requested, expected_errors, report_expected  # noqa: PLC0415
    from rsfuse.scene.answering import ask_scene  # noqa: PLC0415
    from rsfuse.scene.reading import SceneError  # noqa: PLC0415

    debug = args.debug or debug_requested()
    rank, world, local_rank, started = launch()
    try:
        device = args.device
        if world > 1 and device.startswith("cuda"):
            device = f"cuda:{local_rank}"
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        model = MFRSVLM.from_pretrained(args.model, dtype=dtype, device=device)
        processor = MFRSVLMProcessor.from_pretrained(args.model, template=args.template)
        if args.dry_run:
            if rank == 0:
                _dry_run(model, processor, args)
            return 0
        from rsfuse.eval.fingerprint import WEIGHT_SUFFIXES, folder_digest  # noqa: PLC0415

        model_id = f"stat:{folder_digest(args.model, stat_suffixes=WEIGHT_SUFFIXES)}:{args.dtype or dtype}"
        result = ask_scene(model, processor, args.image, args.question, kind=args.kind, gsd=args.gsd,
                           tile_size=args.tile_size, overlap=args.overlap, bands=args.bands,
                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, out_dir=args.out,
                           overwrite=args.overwrite, progress=not args.no_progress, model_id=model_id,
                           max_scene_pixels=args.max_scene_pixels,
                           ranks=RankGroup(rank, world) if world > 1 else None)
    except (SceneError, *expected_errors()) as error:
        return report_expected("rsfuse scene", error, debug=debug)
    except OSError as error:
        if error.filename is None:
            raise
        return report_expected("rsfuse scene", error, debug=debug)
    finally:
        finish(started)
    if rank == 0:
        summary = result.summary
        print(f"{summary['kind']}: " + ", ".join(f"{key} {value}" for key, value in summary.items()
                                                 if key not in ("kind", "question")))
        print(f"wrote {', '.join(str(path) for path in result.files.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
