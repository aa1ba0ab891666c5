"""Image encoding per image vs windows per tower call (``model.canvas.chunk_size``) on the CPU.

For the CPU presets (random weights) a batch of ``--batch`` images goes through ``MFRSVLM.encode_images`` with every
window of one scale in one tower call (``None``) and in calls of at most N windows; reported: the median time per
image over ``--repeats`` interleaved runs after a warm-up, the same for one image alone, and whether every setting gave
the same features as ``None`` (bit for bit). The model's default is ``WINDOWS_PER_TOWER_CALL``.

    python bench/encode_chunk.py --out bench/results/encode_chunk.json
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from rsfuse.model import MFRSVLM, MFRSVLMConfig
from rsfuse.model.vision import WINDOWS_PER_TOWER_CALL

CHUNKS = (None, 512, 256, 128, 64, 32)


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(preset: str, batch: int, repeats: int) -> dict:
    config = MFRSVLMConfig.preset(preset)
    torch.manual_seed(0)
    model = MFRSVLM(config).eval()
    pixels = torch.rand(batch, 3, config.input_size, config.input_size, generator=torch.Generator().manual_seed(0))
    same = {}
    with torch.inference_mode():
        model.canvas.chunk_size = None
        reference = model.encode_images(pixels)
        for chunk in CHUNKS:  # warm-up, and the features of each setting
            model.canvas.chunk_size = chunk
            features = model.encode_images(pixels)
            same[str(chunk)] = all(torch.equal(a, b) for a, b in zip(features, reference))
        times = {str(chunk): [] for chunk in CHUNKS}
        for _ in range(repeats):
            for chunk in CHUNKS:
                model.canvas.chunk_size = chunk
                times[str(chunk)].append(median_time(lambda: model.encode_images(pixels), 1))
        per_image = {chunk: round(statistics.median(values) / batch * 1e3, 2) for chunk, values in times.items()}
        model.canvas.chunk_size = WINDOWS_PER_TOWER_CALL
        alone = median_time(lambda: model.encode_images(pixels[:1]), repeats)
    return {"preset": preset, "windows_per_image": model.canvas.windows_per_image, "batch": batch,
            "ms_per_image": per_image, "ms_one_image_alone": round(alone * 1e3, 2), "same_features": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,tiny_cpu,synthetic_study")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(preset, args.batch, args.repeats) for preset in args.presets.split(",")]
    print(f"| preset | windows/image | " + " | ".join(f"chunk {c}" for c in CHUNKS) + " | one image alone |")
    print("|---|---|" + "---|" * (len(CHUNKS) + 1))
    for r in results:
        cells = " | ".join(f"{r['ms_per_image'][str(c)]} ms" for c in CHUNKS)
        print(f"| {r['preset']} | {r['windows_per_image']} | {cells} | {r['ms_one_image_alone']} ms |")
    print("same features as chunk None:", {r["preset"]: all(r["same_features"].values()) for r in results})
    summary = {"results": results, "default_chunk": WINDOWS_PER_TOWER_CALL,
               "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                           "processor": platform.processor(), "torch": torch.__version__,
                           "python": platform.python_version()}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
