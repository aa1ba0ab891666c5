"""The synthetic remote-sensing benchmark: procedurally drawn nadir scenes with small-object questions.

``generate(out_dir, n_images=..., seed=...)`` writes::

    OUT/images/000000.png ...          RGB PNGs, size x size (default 224 = 2 x the tiny model's 112 px global view)
    OUT/train.json, val.json, test.json  LLaVA records {"id", "image", "conversations", "question_type", "answer",
                                       "small_object", "scene", "kind"}; splits are by image
    OUT/scenes.json                    one full scene description per image (scene class, structures, objects with kind,
                                       colour and bbox [x0, y0, x1, y1] in pixels, x1/y1 exclusive), plus its split
    OUT/meta.json                      generator, version, seed, sizes, counts per split / question type / scene class

Everything is a function of ``seed``: image ``i`` is drawn from ``numpy.random.default_rng(SeedSequence([seed, 1, i]))``
and the split permutation from ``SeedSequence([seed, 2])``, so the same seed gives byte-identical files. A folder that
already holds a complete dataset with the same settings is reused, not regenerated. CLI:
``rsfuse synth OUT --n N --seed S [--size PX] [--object-scale F] [--splits 0.8,0.1,0.1] [--questions-per-image Q]
[--workers W]``; ``rsfuse synth OUT --large-scene`` writes one large georeferenced GeoTIFF instead
(`rsfuse.synthetic.large_scene`; with ``--mosaic N``, N × N of the benchmark's own images:
`rsfuse.synthetic.mosaic_scene`). ``object_scale`` multiplies the small objects' sides (``OBJECT_SIZES``, e.g. 0.5 halves them).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from rsfuse.synthetic.drawing import draw_image
from rsfuse.synthetic.placement import object_sides
from rsfuse.synthetic.questions import QUESTION_TYPES, SMALL_OBJECT_TYPES
from rsfuse.synthetic.scene import (
    COLOUR_NAMES,
    GLOBAL_GRID,
    OBJECT_KINDS,
    OBJECT_SIZES,
    SCENE_CLASSES,
    Scene,
)

__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "SPLIT_NAMES",
    "DEFAULT_QUESTIONS_PER_IMAGE",
    "generate",
    "draw_image",
    "load_scenes",
    "main",
]

GENERATOR = "rsfuse.data.synthetic"  # the name recorded in meta.json (the module's former path; kept so that
# benchmarks written before the move are recognised and reused)
GENERATOR_VERSION = 3
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_QUESTIONS_PER_IMAGE = 3
MIN_SIZE = 112
SPLIT_STREAM = 2  # IMAGE_STREAM (1) is rsfuse.synthetic.drawing's
# Settings that identify a dataset: a folder whose meta.json matches these is reused as is.
IDENTITY_KEYS = ("generator", "version", "seed", "n_images", "size", "object_scale", "splits", "questions_per_image")
# Identity keys added after a dataset may have been written: their value when meta.json lacks them.
IDENTITY_DEFAULTS = {"object_scale": 1.0}
MAX_OBJECT_SCALE = 4.0


def _image_name(index: int, n_images: int) -> str:
    return f"images/{index:0{max(6, len(str(n_images - 1)))}d}.png"


def _write_chunk(
    folder: str, seed: int, indices: list[int], n_images: int, size: int, questions_per_image: int,
    object_scale: float,
) -> list:
    """Draw and save the images ``indices``; returns ``(index, scene dict, questions)`` per image."""
    results = []
    for index in indices:
        scene, pixels, questions = draw_image(seed, index, size=size, questions_per_image=questions_per_image,
                                              object_scale=object_scale)
        Image.fromarray(pixels).save(Path(folder) / _image_name(index, n_images), compress_level=1)
        results.append((index, scene.to_dict(), questions))
    return results


def _split_of_images(seed: int, n_images: int, splits: tuple[float, float, float]) -> list[str]:
    """Split name of every image: a seeded permutation cut into round(n * fraction) parts (train takes the rest)."""
    n_val, n_test = round(n_images * splits[1]), round(n_images * splits[2])
    n_val = min(n_val, n_images)
    n_test = min(n_test, n_images - n_val)
    n_train = n_images - n_val - n_test
    order = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM])).permutation(n_images)
    names = ["train"] * n_images
    for position, index in enumerate(order.tolist()):
        names[index] = "train" if position < n_train else "val" if position < n_train + n_val else "test"
    return names


def _record(index: int, image: str, question_number: int, qa, scene_class: str) -> dict:
    return {
        "id": f"synth-{index:06d}-{question_number}",
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{qa.question}"},
            {"from": "gpt", "value": qa.answer},
        ],
        "question_type": qa.question_type,
        "answer": qa.answer,
        "small_object": qa.small_object,
        "scene": scene_class,
        "kind": qa.kind,
    }


def _write_json(path: Path, data, *, indent: int | None = 1) -> None:
    separators = None if indent is not None else (",", ":")
    path.write_text(json.dumps(data, indent=indent, separators=separators, ensure_ascii=False) + "\n")


def _write_dataset(folder: Path, settings: dict, workers: int) -> dict:
    seed, n_images, size = settings["seed"], settings["n_images"], settings["size"]
    questions_per_image = settings["questions_per_image"]
    (folder / "images").mkdir(parents=True)
    chunks = [list(range(start, n_images, max(1, workers))) for start in range(max(1, workers))]
    arguments = [(str(folder), seed, chunk, n_images, size, questions_per_image, settings["object_scale"])
                 for chunk in chunks if chunk]
    if workers > 1 and len(arguments) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [item for part in pool.map(_write_chunk, *zip(*arguments)) for item in part]
    else:
        results = _write_chunk(*arguments[0])
    results.sort(key=lambda item: item[0])

    split_of = _split_of_images(seed, n_images, tuple(settings["splits"]))
    records: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    scenes = []
    for index, scene, questions in results:
        image = _image_name(index, n_images)
        split = split_of[index]
        scenes.append({"image": image, "split": split, **scene})
        records[split] += [
            _record(index, image, number, qa, scene["scene_class"]) for number, qa in enumerate(questions)
        ]
    for name in SPLIT_NAMES:
        _write_json(folder / f"{name}.json", records[name])
    _write_json(folder / "scenes.json", scenes, indent=None)

    meta = {
        **settings,
        "bbox_format": "x0, y0, x1, y1 in pixels of the size x size image; x1, y1 exclusive",
        "global_grid": GLOBAL_GRID,
        "scene_classes": list(SCENE_CLASSES),
        "object_kinds": list(OBJECT_KINDS),
        "object_sizes_at_224": {kind: list(sides) for kind, sides in OBJECT_SIZES.items()},
        "object_sizes_drawn": {kind: list(object_sides(kind, size=size, object_scale=settings["object_scale"]))
                               for kind in OBJECT_SIZES},
        "colours": list(COLOUR_NAMES),
        "question_types": list(QUESTION_TYPES),
        "small_object_types": sorted(SMALL_OBJECT_TYPES),
        "counts": {
            "images": {name: split_of.count(name) for name in SPLIT_NAMES},
            "samples": {name: len(records[name]) for name in SPLIT_NAMES},
            "small_object_samples": {name: sum(r["small_object"] for r in records[name]) for name in SPLIT_NAMES},
            "question_types": {
                name: {t: Counter(r["question_type"] for r in records[name])[t] for t in QUESTION_TYPES}
                for name in SPLIT_NAMES
            },
            "scenes": {
                name: {c: sum(s["scene_class"] == c and s["split"] == name for s in scenes) for c in SCENE_CLASSES}
                for name in SPLIT_NAMES
            },
        },
    }
    _write_json(folder / "meta.json", meta)
    return meta


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _is_complete(folder: Path, settings: dict) -> dict | None:
    """The folder's meta when it holds every file of a dataset generated with ``settings``, else None."""
    meta = _read_meta(folder)
    if meta is None or any(meta.get(key, IDENTITY_DEFAULTS.get(key)) != settings[key] for key in IDENTITY_KEYS):
        return None
    names = [f"{name}.json" for name in (*SPLIT_NAMES, "scenes")]
    names += [_image_name(index, settings["n_images"]) for index in range(settings["n_images"])]
    return meta if all((folder / name).is_file() for name in names) else None


def _written_files(folder: Path) -> list[str]:
    """The relative paths of the files an earlier run of this generator wrote into ``folder`` (from its meta.json:
    the splits, scenes.json, the images it numbered, meta.json last); nothing else there is ours."""
    meta = _read_meta(folder) or {}
    count = meta.get("n_images")
    count = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
    names = [f"{name}.json" for name in (*SPLIT_NAMES, "scenes")]
    names += [_image_name(index, count) for index in range(count)]
    return [*names, "meta.json"]


def _move_into(staging: Path, out: Path) -> None:
    """Put the staged dataset into ``out``, an earlier output of this generator, touching only the generator's
    files: new files replace old ones, old ones the new dataset lacks are removed, a user's own files are kept.
    meta.json is replaced last, so an interruption leaves a folder the next run recognises and replaces."""
    old = _written_files(out)
    new = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
    new_set = set(new)
    (out / "meta.json").unlink(missing_ok=True)  # from here on, the folder is no complete dataset
    for name in new:
        if name == "meta.json":
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in old:
        if name not in new_set:
            (out / name).unlink(missing_ok=True)
    images = out / "images"
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()
    os.replace(staging / "meta.json", out / "meta.json")
    shutil.rmtree(staging, ignore_errors=True)


def _validate(n_images: int, seed: int, size: int, splits, questions_per_image: int, workers: int,
              object_scale: float) -> tuple[float, ...]:
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images: must be a positive integer, got {n_images!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size: must be an integer >= {MIN_SIZE} px, got {size!r}")
    if isinstance(object_scale, bool) or not isinstance(object_scale, (int, float)) or not (
        0 < object_scale <= MAX_OBJECT_SCALE
    ):
        raise ValueError(f"object_scale: must be a number in (0, {MAX_OBJECT_SCALE:g}], got {object_scale!r}")
    if int(questions_per_image) != questions_per_image or questions_per_image < 1:
        raise ValueError(f"questions_per_image: must be a positive integer, got {questions_per_image!r}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers: must be a positive integer, got {workers!r}")
    fractions = tuple(float(value) for value in splits)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"splits: need three non-negative fractions (train, val, test) summing to 1, got {splits!r}")
    return fractions


def generate(
    out_dir: str | os.PathLike,
    *,
    n_images: int,
    seed: int,
    size: int = 224,
    object_scale: float = 1.0,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    questions_per_image: int = DEFAULT_QUESTIONS_PER_IMAGE,
    workers: int | None = None,
    force: bool = False,
) -> dict:
    """Write the benchmark to ``out_dir`` (see the module docstring); returns meta.json's content plus ``out_dir`` and
    ``reused`` (True when a complete dataset with the same settings was already there and nothing was written).

    The dataset is built in a sibling staging folder and moved into place, so an interrupted run leaves no half
    dataset. ``out_dir`` must be missing, empty, or an earlier output of this generator (its ``meta.json`` is the
    marker): then only the files that output wrote are replaced or removed, never another file of the folder;
    ``force`` regenerates even a complete matching dataset. ``workers`` > 1 draws images in that many processes
    (None: up to 4, one per CPU core, for 64 images or more); the files do not depend on it.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if n_images >= 64 else 1
    fractions = _validate(n_images, seed, size, splits, questions_per_image, workers, object_scale)
    settings = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_images": int(n_images),
        "size": int(size),
        "object_scale": float(object_scale),
        "splits": list(fractions),
        "questions_per_image": int(questions_per_image),
    }
    out = Path(out_dir)
    if not force and (meta := _is_complete(out, settings)) is not None:
        return {**meta, "out_dir": str(out), "reused": True}
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and _read_meta(out) is None)):
        raise FileExistsError(f"{out}: exists and is not a dataset written by {GENERATOR}; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        meta = _write_dataset(staging, settings, int(workers))
        if out.exists():
            _move_into(staging, out)  # only the generator's own files are replaced; a user's stay
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**meta, "out_dir": str(out), "reused": False}


def load_scenes(out_dir: str | os.PathLike) -> dict[str, Scene]:
    """The scene of every image of a generated dataset, keyed by its relative image path."""
    path = Path(out_dir) / "scenes.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (not a synthetic dataset folder?)")
    items = json.loads(path.read_text())
    return {item["image"]: Scene.from_dict(item, where=f"{path}[{i}]") for i, item in enumerate(items)}


def _parse_splits(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--splits: expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--splits: expected three comma-separated numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if "--large-scene" in given and any(arg == "--mosaic" or arg.startswith("--mosaic=") for arg in given):
        from rsfuse.synthetic.mosaic_scene import main as mosaic_main  # noqa: PLC0415  (needs the geo extra)

        return mosaic_main(argv)
    if "--large-scene" in given:
        from rsfuse.synthetic.large_scene import main as large_scene_main  # noqa: PLC0415  (needs the geo extra)

        return large_scene_main(argv)
    parser = argparse.ArgumentParser(
        prog="rsfuse synth", description="Write the synthetic remote-sensing benchmark (images + LLaVA JSON splits)."
    )
    parser.add_argument("out", help="output folder (created; reused when it already holds the same dataset)")
    parser.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="multiply the small objects' sides by this (default 1.0; 0.5 halves them)")
    parser.add_argument("--splits", type=_parse_splits, default=(0.8, 0.1, 0.1), help="train,val,test fractions")
    parser.add_argument("--questions-per-image", type=int, default=DEFAULT_QUESTIONS_PER_IMAGE)
    parser.add_argument("--workers", type=int, default=None, help="processes drawing images (default: up to 4 cores)")
    parser.add_argument("--force", action="store_true", help="regenerate even if OUT already holds this dataset")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.out,
            n_images=args.n,
            seed=args.seed,
            size=args.size,
            object_scale=args.object_scale,
            splits=args.splits,
            questions_per_image=args.questions_per_image,
            workers=args.workers,
            force=args.force,
        )
    except (ValueError, FileExistsError) as error:
        from rsfuse.recipes.errors import debug_requested, report_expected  # noqa: PLC0415  (CLI error path)

        return report_expected("rsfuse synth", error, debug=debug_requested(argv or []))
    counts = summary["counts"]
    state = "reused" if summary["reused"] else "wrote"
    parts = [f"{name} {counts['images'][name]} images / {counts['samples'][name]} samples" for name in SPLIT_NAMES]
    print(f"{state} {summary['n_images']} images to {summary['out_dir']}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
