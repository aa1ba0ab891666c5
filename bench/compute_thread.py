"""Why ``rsfuse serve`` computes on one thread only: the same image encoding on the first computing thread and on a
second one while the first one's OpenMP team lives.

PyTorch's CPU kernels run on OpenMP (libgomp in the PyPI wheels), which keeps a team of threads for every thread
that ran a parallel region, for as long as that thread lives; with more team threads than cores, libgomp stops
spin-waiting between parallel regions. Timed (median of ``--repeats`` after a warm-up; ``MFRSVLMConfig.tiny()``,
random weights, one image): (1) a short-lived thread encodes first (no other team exists), (2) the main thread,
(3) a new thread while the main thread's team lives. (1) and (2) should agree; (3) is what a server whose main thread
had computed paid on every request.

    python bench/compute_thread.py
"""

import argparse
import json
import statistics
import threading
import time

import torch

from rsfuse.model import MFRSVLM, MFRSVLMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny()
    model = MFRSVLM(config).eval()
    pixels = torch.rand(1, 3, config.input_size, config.input_size, generator=torch.Generator().manual_seed(0))
    results: dict[str, float] = {}

    def timed(label: str) -> None:
        with torch.inference_mode():
            model.encode_images(pixels)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                model.encode_images(pixels)
                times.append(time.perf_counter() - started)
        results[label] = round(statistics.median(times) * 1e3, 1)

    def in_thread(label: str) -> None:
        thread = threading.Thread(target=timed, args=(label,))
        thread.start()
        thread.join()

    in_thread("first computing thread (a thread that then ends)")
    timed("main thread")
    in_thread("second thread while the main thread's team lives")
    print(json.dumps({"threads": torch.get_num_threads(), "ms_per_image": results}, indent=2))


if __name__ == "__main__":
    main()
