"""Benchmark ``MultiScaleCanvas``: its overhead over the bare ViT passes, its peak memory vs keeping every hidden state,
and both against the authors' way of computing the same canvas.

Time ratio = median time of ``MultiScaleCanvas.forward`` / median time of the *bare ViT passes on the same windows*:
for each scale, one ``forward_intermediates`` call on a ready-made batch of ``B·n²`` windows of ``base_window`` px
(same number and size of windows, same kept layers, same chunking; no resizing, cutting, pooling or stitching).
Goal: at most 1.10. Runs are interleaved (canvas, bare, canvas, ...) after warm-up. Because a shared machine's load
makes end-to-end medians noisy, the canvas's own operations are also timed alone (the same canvas with a tower that
replays recorded hidden states), giving a second, load-robust estimate (bare + own ops) / bare.

The authors' way (``AuthorsDetailStage`` of ``bench/gpu_paper_scale.py``, the windows part): what the authors' code
does — per window size, ALL windows in ONE tower call keeping every hidden state (``output_hidden_states=True``:
here ``forward_intermediates`` over all ``depth + 1`` indices with ``stop_early=False``), then a Python loop over the
windows for the Hann stitching, in the tower's dtype, and the four phase stacks per layer. Timed interleaved with the
other two; speed-up = authors' time / canvas time. (An earlier baseline, one tower call per window, was ~8x slower
than the authors' real code and is gone.)

Memory ratio = peak tensor memory of the canvas forward / peak tensor memory of the same forward when the tower keeps
every hidden state (a wrapper asks the tower for all ``depth + 1`` states with ``stop_early=False``, as the reference's
``output_hidden_states=True`` does, and hands the canvas only the kept layers). Peaks are measured, not estimated:
on CUDA with ``torch.cuda.max_memory_allocated`` (minus what was allocated before the call); on CPU with the PyTorch
profiler's memory timeline (``profile_memory=True``, ``record_shapes=True``; ``export_memory_timeline``), i.e. the
maximum over time of the bytes held by live tensors, allocator slack excluded. The bytes of the retained hidden states
per image are also printed, computed from the shapes, and so is the peak of the bare ViT passes (the floor: at small
widths the ViT's own activations dominate every peak, so the ratio approaches 1; at the paper's width the 25 retained
states dominate the keep-all peak).

    python bench/canvas.py                                    # CPU-sized: width 128, 6 blocks, 112 px, batch 2
    python bench/canvas.py --device cuda --dtype bf16 --paper # ViT-L/14-336 with random weights, paper canvas
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from gpu_paper_scale import AuthorsDetailStage  # bench/ is on sys.path when this file runs as a script
from rsfuse.encoders import MultiScaleCanvas
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.options import WINDOW_LAYOUTS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYER_FRACTIONS = (0.33, 0.66, 1.0)


class KeepAllHiddenStates(nn.Module):
    """Tower wrapper that computes and holds every hidden state (the reference's retention), returning the asked ones."""

    def __init__(self, tower: CLIPVisionTower) -> None:
        super().__init__()
        self.tower = tower
        self.config = tower.config
        self.num_layers = tower.num_layers

    def forward_intermediates(self, pixels, indices, stop_early=True):
        every_state = self.tower.forward_intermediates(pixels, list(range(self.num_layers + 1)), stop_early=False)
        return [every_state[index] for index in indices]


class ReplayTower(nn.Module):
    """Returns hidden states recorded from the real tower (per window-batch size): times the canvas's own operations."""

    def __init__(self, tower: CLIPVisionTower, recorded: dict[int, list[torch.Tensor]]) -> None:
        super().__init__()
        self.config = tower.config
        self.num_layers = tower.num_layers
        self.recorded = recorded

    def forward_intermediates(self, pixels, indices, stop_early=True):
        return self.recorded[pixels.shape[0]]


def record_hidden_states(tower: CLIPVisionTower, canvas: MultiScaleCanvas, windows: list[torch.Tensor]):
    """Hidden states the canvas's tower calls return, keyed by window-batch size (sizes differ between scales)."""
    recorded = {}
    for batch in windows:
        chunks = batch.split(canvas.chunk_size) if canvas.chunk_size is not None else (batch,)
        for chunk in chunks:
            recorded[chunk.shape[0]] = tower.forward_intermediates(chunk, list(canvas.layers), stop_early=True)
    return recorded


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--paper", action="store_true", help="ViT-L/14-336 (random weights), canvas 672, layers 8/16/24")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default 2, or 1 with --paper)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image", type=int, default=112, help="tower image size = base window; canvas = 2x")
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--scales", default="1.0,0.5")
    parser.add_argument("--window-layout", choices=WINDOW_LAYOUTS, default="spatial")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="process = CPU time of this process (use with --threads 1 on a shared CPU; not for CUDA)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args()


def build_tower(args: argparse.Namespace) -> CLIPVisionTower:
    if args.paper:
        config = CLIPVisionConfig.vit_l14_336()
    else:
        config = CLIPVisionConfig(
            image_size=args.image,
            patch_size=args.patch,
            hidden_size=args.width,
            intermediate_size=4 * args.width,
            num_hidden_layers=args.depth,
            num_attention_heads=args.heads,
        )
    torch.manual_seed(0)
    return CLIPVisionTower(config).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_passes(tower: CLIPVisionTower, canvas: MultiScaleCanvas, windows: list[torch.Tensor]) -> None:
    """The same window batches through the tower, same kept layers and chunking, nothing else."""
    for batch in windows:
        chunks = batch.split(canvas.chunk_size) if canvas.chunk_size is not None else (batch,)
        for chunk in chunks:
            tower.forward_intermediates(chunk, list(canvas.layers), stop_early=True)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def timed(fn, device: torch.device, clock: str = "wall") -> float:
    """Seconds ``fn`` takes on ``clock`` ("process" = this process's CPU time: steady on a loaded CPU, one thread)."""
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes of live tensors created while ``fn`` runs (see the module docstring for the method)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as handle:
            _, sizes = json.load(handle)
    return int(max(sum(row) for row in sizes))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "process" and device.type != "cpu":
        raise SystemExit("--clock process measures CPU time; use the wall clock on CUDA")
    dtype = DTYPES[args.dtype]
    batch = args.batch or (1 if args.paper else 2)
    tower = build_tower(args).to(device=device, dtype=dtype)
    depth, image = tower.num_layers, tower.config.image_size
    layers = tuple(min(max(round(f * depth), 1), depth) for f in LAYER_FRACTIONS)
    settings = dict(
        canvas_size=2 * image,
        base_window=image,
        window_scales=tuple(float(s) for s in args.scales.split(",")),
        layers=layers,
        window_layout=args.window_layout,
        chunk_size=args.chunk_size,
    )
    canvas = MultiScaleCanvas(tower, **settings).eval()
    keep_all = MultiScaleCanvas(KeepAllHiddenStates(tower), **settings).eval()
    every_state = list(range(depth + 1))
    authors = AuthorsDetailStage(
        lambda windows: tower.forward_intermediates(windows, every_state, stop_early=False),
        tower_dtype=dtype,
        patch_size=tower.config.patch_size,
        global_size=image,
        canvas_size=settings["canvas_size"],
        base_window=image,
        window_scales=settings["window_scales"],
        detail_layers=layers,
        global_layer=None,
    )
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, image, image, generator=generator).to(device=device, dtype=dtype)
    windows = [
        torch.randn(batch * grid.num_windows, 3, image, image, generator=generator).to(device=device, dtype=dtype)
        for grid in canvas.grids
    ]

    with torch.inference_mode():
        for _ in range(args.warmup):
            canvas(pixels)
            bare_passes(tower, canvas, windows)
            authors(pixels)
        canvas_times, bare_times, authors_times = [], [], []
        for _ in range(args.repeats):
            canvas_times.append(timed(lambda: canvas(pixels), device, args.clock))
            bare_times.append(timed(lambda: bare_passes(tower, canvas, windows), device, args.clock))
            authors_times.append(timed(lambda: authors(pixels), device, args.clock))
        canvas_time, bare_time = statistics.median(canvas_times), statistics.median(bare_times)
        authors_time = statistics.median(authors_times)
        replay = MultiScaleCanvas(ReplayTower(tower, record_hidden_states(tower, canvas, windows)), **settings)
        own_times = [timed(lambda: replay(pixels), device, args.clock) for _ in range(args.warmup + args.repeats)]
        own_time = statistics.median(own_times[args.warmup :])
        results = dict(
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            threads=torch.get_num_threads(),
            clock=args.clock,
            dtype=args.dtype,
            batch=batch,
            tower=dict(width=tower.config.hidden_size, depth=depth, image=image, patch=tower.config.patch_size),
            canvas=dict(settings, windows_per_side=canvas.windows_per_side, token_sides=canvas.window_token_sides),
            canvas_seconds=canvas_time,
            bare_vit_seconds=bare_time,
            time_ratio=canvas_time / bare_time,
            time_ratio_of_minimums=min(canvas_times) / min(bare_times),
            canvas_own_ops_seconds=own_time,
            time_ratio_from_own_ops=(bare_time + own_time) / bare_time,
            canvas_seconds_all=canvas_times,
            bare_vit_seconds_all=bare_times,
            authors_seconds=authors_time,
            authors_seconds_all=authors_times,
            speedup_vs_authors=authors_time / canvas_time,
        )
        element = torch.finfo(dtype).bits // 8
        tokens = (image // tower.config.patch_size) ** 2
        per_image_windows = canvas.windows_per_image
        results["retained_hidden_bytes_per_image"] = dict(
            kept_layers=per_image_windows * len(layers) * tokens * tower.config.hidden_size * element,
            every_layer=per_image_windows * (depth + 1) * (tokens + 1) * tower.config.hidden_size * element,
        )
        if not args.skip_memory:
            canvas_peak = peak_bytes(lambda: canvas(pixels), device)
            keep_all_peak = peak_bytes(lambda: keep_all(pixels), device)
            bare_peak = peak_bytes(lambda: bare_passes(tower, canvas, windows), device)
            authors_peak = peak_bytes(lambda: authors(pixels), device)
            results.update(
                canvas_peak_bytes=canvas_peak,
                keep_all_peak_bytes=keep_all_peak,
                bare_vit_peak_bytes=bare_peak,
                authors_peak_bytes=authors_peak,
                memory_ratio_vs_authors=canvas_peak / authors_peak,
                memory_ratio=canvas_peak / keep_all_peak,
                memory_ratio_vs_bare_vit=canvas_peak / bare_peak,
            )

    results["load_average_1min"] = os.getloadavg()[0]
    print(f"device {results['device_name']} ({device}, {results['threads']} threads, load average "
          f"{results['load_average_1min']:.1f} on {os.cpu_count()} cores), {args.dtype}, batch {batch}")
    print(f"tower width {tower.config.hidden_size}, {depth} blocks, {image} px; canvas {settings['canvas_size']}, "
          f"scales {settings['window_scales']}, layers {layers}, windows/side {canvas.windows_per_side}")
    print(f"canvas forward   {canvas_time * 1e3:9.2f} ms (median of {args.repeats}, {args.clock} clock)")
    print(f"bare ViT passes  {bare_time * 1e3:9.2f} ms")
    print(f"time ratio       {results['time_ratio']:9.3f}   (medians; goal <= 1.10)")
    print(f"                 {results['time_ratio_of_minimums']:9.3f}   (minimums, less sensitive to other load)")
    print(f"canvas own ops   {own_time * 1e3:9.2f} ms (resize, cut, upsample, pool, stitch; tower replayed)")
    print(f"                 {results['time_ratio_from_own_ops']:9.3f}   ((bare + own ops) / bare)")
    print(f"authors' way     {authors_time * 1e3:9.2f} ms (one tower call per window size, every hidden state kept, "
          f"Python-loop stitching) -> canvas is {results['speedup_vs_authors']:.3f}x faster")
    retained = results["retained_hidden_bytes_per_image"]
    print(f"retained hidden states per image: kept layers {retained['kept_layers'] / 2**20:.1f} MiB, "
          f"every layer {retained['every_layer'] / 2**20:.1f} MiB")
    if "memory_ratio" in results:
        print(f"peak memory      canvas {results['canvas_peak_bytes'] / 2**20:.1f} MiB, keep-all "
              f"{results['keep_all_peak_bytes'] / 2**20:.1f} MiB, bare ViT passes {results['bare_vit_peak_bytes'] / 2**20:.1f} MiB")
        print(f"memory ratio     {results['memory_ratio']:9.3f}   (canvas / keep every hidden state)")
        print(f"                 {results['memory_ratio_vs_bare_vit']:9.3f}   (canvas / bare ViT passes)")
        print(f"                 {results['memory_ratio_vs_authors']:9.3f}   (canvas / authors' way, peak "
              f"{results['authors_peak_bytes'] / 2**20:.1f} MiB)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
