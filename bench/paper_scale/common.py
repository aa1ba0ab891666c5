"""Timing, memory and recording helpers and the in-run references (matmul throughput, read bandwidth)."""

import contextlib
import gc
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch




DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SECTIONS = ("checks", "answers1", "detail", "batch", "tower", "serve", "quant")
SYSTEMS = ("llava-hf", "rsfuse", "rsfuse-compile")
PAPER_PASS_GFLOP = 381  # the figure for one ViT-L/14-336 pass (matmul FLOPs)
# The authors' own code (Yunkaidang/RSVLM DeepStackProcessor), detail stage, measured by the issue's author (issue 14).
AUTHORS_REAL_CODE = {"ms_per_image": {"batch1": 93.7, "batch8": 58.1}, "peak_gib": {"batch1": 2.85, "batch8": 17.7},
                     "machine": "H200, torch 2.11 (issue 14)"}



# ----- small helpers -----------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls; all samples; the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples, result


def peak_gib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak allocated GiB above the starting point while ``fn`` runs (CUDA only)."""
    if device.type != "cuda":
        return None
    release(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return round(peak / 2**30, 3)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class Recorder:
    """Results as one JSON document, rewritten after every section; one line per record on stdout."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_paper_scale.json"
        self.results: dict = {"sections": {}, "figures": {}, "skipped": {}}
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def put(self, section: str, key: str, value) -> None:
        self.results["sections"].setdefault(section, {})[key] = value
        print(json.dumps({"section": section, key: value}, default=str), flush=True)
        self.save()

    def figure(self, name: str, value) -> None:
        self.results["figures"][name] = value
        self.save()

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.results, indent=2, default=str))
        temporary.replace(self.path)


# ----- references --------------------------------------------------------------------------------------------------
def measure_references(device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    """Matmul throughput of one large GEMM and read bandwidth of read-only reductions over a large buffer."""
    size = 512 if tiny else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    count = 3 if tiny else 20

    def products():
        for _ in range(count):
            torch.mm(a, b, out=c)

    seconds, _, _ = median_seconds(products, device, repeats=3, warmup=1)
    tflops = 2 * size**3 * count / seconds / 1e12
    del a, b, c
    element = torch.finfo(dtype).bits // 8
    buffer_bytes = (64 if tiny else 3072) * 2**20  # fewer than 2**31 elements: no 64-bit index split
    buffer = torch.empty(buffer_bytes // element, device=device, dtype=dtype).fill_(1.0)
    bandwidths = {}
    for name, kernel in (("sum", torch.sum), ("amax", torch.amax)):
        kernel_seconds, _, _ = median_seconds(lambda: kernel(buffer), device, repeats=10, warmup=2)
        bandwidths[name] = buffer_bytes / kernel_seconds / 1e9
    del buffer
    release(device)
    return {
        "matmul_size": size,
        "matmul_tflops": round(tflops, 2),
        "read_buffer_gib": buffer_bytes / 2**30,
        "read_gb_per_s_by_kernel": {name: round(value, 1) for name, value in bandwidths.items()},
        "read_gb_per_s": round(max(bandwidths.values()), 1),
    }


