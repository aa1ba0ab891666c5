"""Whole-scene counts against the synthetic ground truth: trained MF-RSVLM vs its global-only twin.

Writes (or reads, ``--scene``) a ``rsfuse synth --large-scene --mosaic N`` GeoTIFF: N × N images of the synthetic
benchmark's dataset ``--data-seed`` (default 1; the models were trained on seed 0's images), laid edge to edge with a
projected CRS. For each model and each object kind, ``rsfuse.scene.ask_scene`` asks the benchmark's count question
("How many ships are there?") over the whole scene: tiles of the model's input size at native resolution, no overlap
(the default for counts; the tile grid is then the mosaic's grid), greedy, the tiles' numbers summed. Reported per
model and kind: the true and the answered scene count, the absolute and relative error of the scene count, and per
tile the mean absolute error and the share of exact counts (a tile's truth: its image's objects). The per-tile figures
say more than the scene sum, whose over- and under-counts can cancel. An answer without a number counts as 0 in
the errors and never as exact.

Two readings of the same answers. *All tiles*: the question as a user asks it of a whole scene — every tile is asked
about every kind. But the benchmark asks a count only of the kinds its scene class holds (ships in a harbour, planes at
an airport), so both models were never trained to answer "0" about a plane in a forest; those tiles are out of their
training. *Benchmark tiles*: the same sums over the tiles whose image's scene class holds the kind (every object of
the kind is in such a tile), i.e. what the models were trained to answer.

    python bench/scene_count.py --models mf_rsvlm=models/synthetic_study/mf_rsvlm,global_only=models/synthetic_study/global_only \
        --grid 16 --out bench/results/scene_count.json
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="name=folder,name=folder")
    parser.add_argument("--grid", type=int, default=16, help="benchmark images a side of the scene")
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--scene", type=Path, default=None, help="a mosaic scene folder written before")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rsfuse import MFRSVLM, MFRSVLMProcessor  # noqa: PLC0415
    from rsfuse.scene import ask_scene  # noqa: PLC0415
    from rsfuse.synthetic.mosaic_scene import write_mosaic_scene  # noqa: PLC0415
    from rsfuse.synthetic.scene import OBJECT_KINDS, plural  # noqa: PLC0415

    models = dict(item.split("=", 1) for item in args.models.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="rsfuse-scene-count-"))
    sizes = {MFRSVLMProcessor.from_pretrained(folder).image_size for folder in models.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the models take different image sizes {sorted(sizes)}; compare models of one size")
    image_size = sizes.pop()
    scene_dir = args.scene or scratch / "scene"
    if args.scene is None:
        write_mosaic_scene(scene_dir, grid=args.grid, image_size=image_size, data_seed=args.data_seed)
    meta = json.loads((scene_dir / "scene.json").read_text())
    objects = json.loads((scene_dir / "objects.EPSG_{}.geojson".format(meta["epsg"])).read_text())["features"]
    truth_per_image: dict[tuple[str, int], int] = {}
    for feature in objects:
        key = (feature["properties"]["kind"], feature["properties"]["image"])
        truth_per_image[key] = truth_per_image.get(key, 0) + 1
    grid = meta["grid"]
    candidates = {item["index"]: set(item["candidate_kinds"]) for item in meta["images"]}
    rows = []
    for name, folder in models.items():
        model = MFRSVLM.from_pretrained(folder).eval()
        processor = MFRSVLMProcessor.from_pretrained(folder)
        for kind in OBJECT_KINDS:
            started = time.perf_counter()
            result = ask_scene(model, processor, scene_dir / "scene.tif", f"How many {plural(kind)} are there?",
                               kind="count", batch_size=args.batch_size, max_new_tokens=4,
                               out_dir=scratch / name / kind.replace(" ", "_"))
            seconds = time.perf_counter() - started
            tiles = []  # (in the benchmark's questions, answered count or None, truth)
            for record in result.records:
                image = (record["y"] // image_size) * grid + record["x"] // image_size
                tiles.append((kind in candidates[image], (record.get("parsed") or {}).get("count"),
                              truth_per_image.get((kind, image), 0)))
            row = {"model": name, "kind": kind, "tiles_per_s": round(len(tiles) / seconds, 2),
                   "unparsed": result.summary.get("unparsed", 0), "scene_count_of_ask_scene": result.summary["count"]}
            for label, chosen in (("all", tiles), ("benchmark", [tile for tile in tiles if tile[0]])):
                truth = sum(tile[2] for tile in chosen)
                answered = sum(tile[1] or 0 for tile in chosen)
                row[label] = {"tiles": len(chosen), "truth": truth, "answered": answered,
                              "abs_error": abs(answered - truth), "rel_error": round(abs(answered - truth) / max(truth, 1), 3),
                              "tile_mae": round(sum(abs((tile[1] or 0) - tile[2]) for tile in chosen) / max(len(chosen), 1), 3),
                              "tile_exact": round(sum(tile[1] == tile[2] for tile in chosen) / max(len(chosen), 1), 3)}
            assert row["all"]["answered"] == result.summary["count"] and row["all"]["truth"] == meta["counts"][kind]
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    for label in ("all", "benchmark"):
        print(f"\n{label} tiles\n\n| model | kind | tiles | truth | answered | scene error | tile MAE | tiles exact |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            cell = row[label]
            print(f"| {row['model']} | {row['kind']} | {cell['tiles']} | {cell['truth']} | {cell['answered']} | "
                  f"{cell['abs_error']} ({cell['rel_error']:.0%}) | {cell['tile_mae']} | {cell['tile_exact']:.0%} |")
        for name in models:
            mine = [row[label] for row in rows if row["model"] == name]
            print(f"{name}: summed scene-count error over the kinds {sum(c['abs_error'] for c in mine)} of "
                  f"{sum(c['truth'] for c in mine)} objects; mean tile MAE {sum(c['tile_mae'] for c in mine) / len(mine):.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "scene": meta, "models": models, "machine": {
            "platform": platform.platform(), "torch": torch.__version__, "threads": args.threads}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
