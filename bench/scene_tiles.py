"""Tiles per second of ``ask_scene`` on the CPU with the tiny model (``MFRSVLMConfig.tiny()``, random weights).

Builds the tiny model (its decoder's vocabulary sized to a 512-piece SentencePiece tokenizer trained here), writes a
``rsfuse synth --large-scene`` GeoTIFF (``--size`` pixels, 0.5 m, overviews), and answers a count question over it:
112-px model tiles at ``--gsd`` (default 2 m = 448 native pixels a tile), no overlap, greedy, ``--max-new-tokens``
tokens, batches of ``--batch-size`` tiles. Reported: tiles, seconds, tiles/s, and the share of the time spent reading
tiles (rasterio) against answering them. Run twice; the second, warm run is reported.

    python bench/scene_tiles.py --out bench/results/scene_tiles.json
"""

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

CORPUS = ["USER: How many ships are in the harbour? ASSISTANT: There are 12 ships.",
          "USER: Describe the image. ASSISTANT: Farmland, roads, a river and a small town with a bridge.",
          "Is there an airport? Yes. No. Storage tanks, planes, vehicles, buildings, trees, a beach."] * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--gsd", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rsfuse.llm.tokenizer import train_sentencepiece
    from rsfuse.model import MFRSVLM, MFRSVLMConfig
    from rsfuse.processor import MFRSVLMProcessor
    from rsfuse.scene import answering, ask_scene
    from rsfuse.synthetic.large_scene import write_large_scene

    with tempfile.TemporaryDirectory(prefix="rsfuse-scene-bench-") as scratch:
        folder = Path(scratch)
        tokenizer = train_sentencepiece(CORPUS, folder / "tok", vocab_size=512)
        config = MFRSVLMConfig.tiny()
        config = replace(config, llm=replace(config.llm, vocab_size=tokenizer.vocab_size))
        torch.manual_seed(0)
        model = MFRSVLM(config).eval()
        processor = MFRSVLMProcessor.from_config(config, tokenizer)
        write_large_scene(folder / "scene", size=args.size, seed=0)
        reading = {"seconds": 0.0}
        original = answering._TileAnswerer.tile_image

        def timed(self, tile):
            start = time.perf_counter()
            try:
                return original(self, tile)
            finally:
                reading["seconds"] += time.perf_counter() - start

        answering._TileAnswerer.tile_image = timed
        runs = []
        for _ in range(2):
            reading["seconds"] = 0.0
            start = time.perf_counter()
            result = ask_scene(model, processor, folder / "scene" / "scene.tif", "How many ships are there?",
                               gsd=args.gsd, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                               model_id="bench")
            seconds = time.perf_counter() - start
            runs.append({"tiles": len(result.records), "answered": result.summary["answered"], "seconds": seconds,
                         "tiles_per_s": result.summary["answered"] / seconds,
                         "reading_share": reading["seconds"] / seconds})
    report = {"settings": vars(args) | {"out": str(args.out)}, "tile_size": config.input_size, "runs": runs,
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads"}
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
