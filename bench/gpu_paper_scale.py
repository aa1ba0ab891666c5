"""MF-RSVLM-7B at paper scale on one GPU, random weights, bf16, against transformers' LLaVA-1.5-7B in the same run.

One call measures, checks and prints everything, and writes ``gpu_paper_scale.json`` (and ``table.md``) under
``--out``; the JSON is rewritten after every section, so a run stopped by a timeout still leaves what it measured.

References, measured in the run:
  * bf16 matmul throughput: one large GEMM (8192³), TFLOP/s;
  * read bandwidth: a read-only reduction (``torch.sum`` / ``torch.amax``) over a 4 GiB bf16 buffer, GB/s (the best
    of the two; no copy, so nothing is written).

Sections (``--sections``, default all, in this order):
  checks      rsfuse global-only (``detail=False``, ``image_placement="token"``, layer −2) vs transformers'
              ``LlavaForConditionalGeneration`` on the *same* random weights (the LLaVA module's parameters are
              rsfuse's tensors, shared): logits at paper scale in the run's dtype, and again at tiny size in fp32
              (when the run is not already tiny). Max |Δ| / max |logit|, top-1 agreement.
  answers1    the 64-token greedy answer at batch 1: rsfuse MF-RSVLM eager, rsfuse ``generate(compile=True)``
              (CUDA graphs on a GPU) and transformers' LLaVA-1.5-7B ``generate`` (default cache, eager: what its users
              run). Per system the median of ``--repeats`` 1-token and 64-token answers, calls interleaved across
              systems after an untimed warm-up (compile time excluded); decode step = (t64 − t1) / 63 (bench/decode.py's
              convention). Also the steady decode step of a ``GenerationSession`` (one session, warm, no host
              syncs) and the weight-streaming floor = decoder bytes read per token / measured read bandwidth.
  detail      the detail stage — global view + 58 window tower passes per image, canvas, 24 stacks
              (``MFRSVLM.vision_features``) — at ``--detail-batches`` (1, 8), as a fraction of the measured matmul
              throughput counting matmul FLOPs only (≈ 381 GFLOP per ViT-L/14-336 pass, 22.5 TFLOP per image);
              against the authors' way (``AuthorsDetailStage``: all windows of one size in ONE tower call with
              ``output_hidden_states=True``, every hidden state kept, Python loops over windows for the Hann
              stitching, on transformers' ``CLIPVisionModel`` as the authors' code runs it). Time, peak memory,
              agreement.
  batch       answers per second at batch 16 (16 / t64) for the same three systems; eager vs compiled token agreement.
  tower       the detail stage again with every tower block compiled (``torch.compile``, compile time excluded).

Sections "batch" and "tower" are skipped (and listed under "skipped") when ``--budget-s`` minus their reserve
(150 s / 90 s) has already been used, so that the whole call stays inside a device timeout. On a GPU the run logs
recompilations and inductor's performance hints (CUDA graphs skipped, and why) to stderr.

    python bench/gpu_paper_scale.py --out bench/results/h200_paper_scale       # one H100/H200 (~4-6 min)
    python bench/gpu_paper_scale.py --tiny --out /tmp/tiny                      # CPU, fp32, tiny sizes: same code

``--tiny`` runs every section at ``MFRSVLMConfig.tiny()`` sizes on the CPU in fp32 (``torch.compile`` without CUDA
graphs): a check of the script, not a measurement.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsfuse import MFRSVLM, MFRSVLMConfig
from rsfuse.checkpoints.llava_hf import rename_llava_hf_key
from rsfuse.encoders.windows import plan_window_grid
from rsfuse.llm.rope import RotaryEmbedding
from rsfuse.model.generation import GenerationSession, SamplingParams

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SECTIONS = ("checks", "answers1", "detail", "batch", "tower")
SYSTEMS = ("llava-hf", "rsfuse", "rsfuse-compile")
PAPER_PASS_GFLOP = 381  # the figure for one ViT-L/14-336 pass (matmul FLOPs)
# The authors' own code (Yunkaidang/RSVLM DeepStackProcessor), detail stage, measured by the issue's author (issue 14).
AUTHORS_REAL_CODE = {"ms_per_image": {"batch1": 93.7, "batch8": 58.1}, "peak_gib": {"batch1": 2.85, "batch8": 17.7},
                     "machine": "H200, torch 2.11 (issue 14)"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_paper_scale.json and table.md")
    parser.add_argument("--tiny", action="store_true", help="MFRSVLMConfig.tiny() sizes (default device cpu, fp32)")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 (fp32 with --tiny)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=48, help="text tokens of the prompt (plus the image)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each batch-1 answer (5; tiny 3)")
    parser.add_argument("--batch", type=int, default=None, help="batch of the answers-per-second section (16; tiny 4)")
    parser.add_argument("--batch-repeats", type=int, default=None, help="timed repeats of each batch answer (3; tiny 2)")
    parser.add_argument("--detail-batches", default=None, help="batches of the detail stage (1,8; tiny 1,2)")
    parser.add_argument("--detail-repeats", type=int, default=None, help="(5; tiny 2)")
    parser.add_argument("--authors-repeats", type=int, default=None, help="(3; tiny 1)")
    parser.add_argument("--session-steps", type=int, default=32, help="timed steps of the steady-state session")
    parser.add_argument("--tower-batch", type=int, default=None, help="batch of the compiled-tower run (default: largest detail batch)")
    parser.add_argument("--attention-backend", default="sdpa", help="rsfuse attention backend (the baselines use SDPA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="sections 'batch' and 'tower' are skipped when less than 20%% of this is left")
    args = parser.parse_args(argv)
    defaults = dict(repeats=3, batch=4, batch_repeats=2, detail_batches="1,2", detail_repeats=2, authors_repeats=1)
    if not args.tiny:
        defaults = dict(repeats=5, batch=16, batch_repeats=3, detail_batches="1,8", detail_repeats=5, authors_repeats=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("fp32" if args.tiny else "bf16")
    args.sections = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown} (known: {', '.join(SECTIONS)})")
    args.detail_batches = [int(b) for b in args.detail_batches.split(",") if b]
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the decode step is (t_N - t_1) / (N - 1))")
    args.session_steps = min(args.session_steps, max(1, args.new_tokens - 1 - max(4, args.session_steps // 4)))
    return args


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


# ----- models ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def random_mfrsvlm(config: MFRSVLMConfig, device: torch.device, dtype: torch.dtype, seed: int) -> MFRSVLM:
    """An ``MFRSVLM`` with random weights, built on the meta device and materialised in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = MFRSVLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.endswith("residual_scale"):
            parameter.fill_(config.residual_scale_init)
        elif parameter.ndim == 1 and name.endswith("weight"):
            parameter.fill_(1.0)
        elif parameter.ndim == 1:
            parameter.zero_()
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters(device)
    return model.eval()


def llava_shaped(config: MFRSVLMConfig) -> MFRSVLMConfig:
    """rsfuse global-only with LLaVA-1.5's settings and llava-hf's vocabulary (image token = the first extra id)."""
    llm = dataclasses.replace(config.llm, vocab_size=config.llm.vocab_size + 64)
    return dataclasses.replace(
        config, llm=llm, detail=False, global_layer=-2, image_placement="token", image_token_index=config.llm.vocab_size
    )


@contextlib.contextmanager
def no_weight_init():
    """transformers' ``no_init_weights`` (parameters left uninitialised: they are replaced right after)."""
    try:
        from transformers.initialization import no_init_weights  # noqa: PLC0415  (transformers 5)
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # noqa: PLC0415  (transformers 4)
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def hf_vision_config(config: MFRSVLMConfig):
    import transformers  # noqa: PLC0415

    vision = config.vision
    return transformers.CLIPVisionConfig(
        image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads, hidden_act=vision.hidden_act,
        layer_norm_eps=vision.layer_norm_eps, projection_dim=vision.hidden_size,
    )


def build_llava_hf(global_only: MFRSVLM, device: torch.device, dtype: torch.dtype):
    """transformers' ``LlavaForConditionalGeneration`` of the same shapes whose parameters ARE ``global_only``'s
    tensors (``load_state_dict(assign=True)``, every key mapped by rsfuse's llava-hf key reader; nothing copied)."""
    import transformers  # noqa: PLC0415

    config, llm = global_only.config, global_only.config.llm
    text = transformers.LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, head_dim=llm.head_dim, rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta, max_position_embeddings=llm.max_position_embeddings,
        bos_token_id=llm.bos_token_id, eos_token_id=llm.eos_token_id, pad_token_id=llm.pad_token_id,
    )
    llava_config = transformers.LlavaConfig(
        vision_config=hf_vision_config(config), text_config=text, image_token_index=config.image_token_index,
        vision_feature_layer=config.global_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=config.num_visual_tokens,
    )
    llava_config._attn_implementation = "sdpa"
    with torch.device(device), default_dtype(dtype), no_weight_init():
        llava = transformers.LlavaForConditionalGeneration(llava_config)
    ours = global_only.state_dict()
    prefix = {"llm": "llm.", "vision": "vision_tower.", "projector": "projector."}
    mapped = {}
    for key in llava.state_dict():
        renamed = rename_llava_hf_key(key)
        if renamed is None or prefix[renamed[0]] + renamed[1] not in ours:
            raise KeyError(f"transformers' LLaVA key {key!r} has no rsfuse counterpart")
        mapped[key] = ours[prefix[renamed[0]] + renamed[1]]
    llava.load_state_dict(mapped, strict=True, assign=True)
    return llava.eval()


def build_hf_clip(model: MFRSVLM, device: torch.device, dtype: torch.dtype):
    """transformers' ``CLIPVisionModel`` (the authors' tower class) sharing ``model``'s tower tensors."""
    import transformers  # noqa: PLC0415

    vision_config = hf_vision_config(model.config)
    vision_config._attn_implementation = "sdpa"
    with torch.device(device), default_dtype(dtype), no_weight_init():
        clip = transformers.CLIPVisionModel(vision_config)
    ours = model.vision_tower.state_dict()
    mapped = {key: ours[key.removeprefix("vision_model.")] for key in clip.state_dict()}
    clip.load_state_dict(mapped, strict=True, assign=True)
    return clip.eval()


# ----- the authors' detail stage -----------------------------------------------------------------------------------
class AuthorsDetailStage:
    """The detail stage as the authors' code runs it (Yunkaidang/RSVLM ``DeepStackProcessor`` with the
    ``CLIPVisionTower.extract_hidden_states`` of its LLaVA tower), re-stated from its mechanics (docs/DESIGN_NOTES.md §1):

    * images in a dtype other than fp16/fp32/fp64 (bf16) are worked on in fp32; global view and canvas by bilinear
      ``F.interpolate`` (``align_corners=False``);
    * global view: one tower call with every hidden state, the selected one without CLS, cast to the working dtype;
    * per window size: ``unfold`` on H then W, ``.contiguous().view(-1, C, w, w)`` (the "reference" window layout),
      small windows bilinearly upsampled to the base window, then ALL windows of that size in ONE tower call with
      ``output_hidden_states=True`` (all ``depth + 1`` states kept, CLS sliced off);
    * per kept layer: the window grids viewed as ``[B, n, n, s, s, D]``, average-pooled when the window is small,
      and stitched with a Python loop over windows: ``canvas[:, top:top+t, left:left+t] += f · w``, Hann weights in the
      tower's dtype, output ``canvas / clamp(weights, 1e-6)``;
    * stacks: ``canvas[:, r::2, c::2]`` for r, c in (0, 1), each reshaped to ``[B, N, D]``.

    ``hidden_states(pixels)`` returns every hidden state, CLS dropped (``[n, N, D]`` each, HF numbering).
    ``__call__(images) -> (global [B, N, D] or None, list of K stacks [B, N, D])``.
    """

    def __init__(
        self,
        hidden_states: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        *,
        tower_dtype: torch.dtype,
        patch_size: int,
        global_size: int,
        canvas_size: int,
        base_window: int,
        window_scales: Sequence[float],
        detail_layers: Sequence[int],
        global_layer: int | None,
        factor: int = 2,
    ) -> None:
        self.hidden_states = hidden_states
        self.tower_dtype = tower_dtype
        self.global_size, self.canvas_size, self.base_window = global_size, canvas_size, base_window
        self.levels = [
            plan_window_grid(scale=scale, canvas_size=canvas_size, base_window=base_window, patch_size=patch_size)
            for scale in window_scales
        ]
        self.detail_layers = list(detail_layers)
        self.global_layer = global_layer
        self.factor = factor
        self.base_side = base_window // patch_size

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        work = images if images.dtype in (torch.float16, torch.float32, torch.float64) else images.float()
        global_tokens = None
        if self.global_layer is not None:
            low = F.interpolate(work, size=(self.global_size,) * 2, mode="bilinear", align_corners=False)
            global_tokens = self.hidden_states(low.to(self.tower_dtype))[self.global_layer].to(work.dtype)
        canvas = F.interpolate(work, size=(self.canvas_size,) * 2, mode="bilinear", align_corners=False)
        batch, channels = canvas.shape[:2]
        stacks = []
        for level in self.levels:
            size, step = level.window_pixels, level.stride_pixels
            windows = canvas.unfold(2, size, step).unfold(3, size, step).contiguous().view(-1, channels, size, size)
            if size != self.base_window:
                windows = F.interpolate(windows, size=(self.base_window,) * 2, mode="bilinear", align_corners=False)
            states = self.hidden_states(windows.to(self.tower_dtype))
            for layer in self.detail_layers:
                stitched = self._stitch(states[layer], level, batch)
                for row in range(self.factor):
                    for col in range(self.factor):
                        sampled = stitched[:, row :: self.factor, col :: self.factor, :]
                        stacks.append(sampled.reshape(batch, -1, sampled.shape[-1]))
        return global_tokens, stacks

    def _stitch(self, features: torch.Tensor, level, batch: int) -> torch.Tensor:
        n, base, side, stride = level.per_side, self.base_side, level.token_side, level.stride_tokens
        dim = features.shape[-1]
        grids = features.view(batch, n, n, base, base, dim)
        if level.pool > 1:
            planes = grids.view(batch * n * n, base, base, dim).permute(0, 3, 1, 2)
            pooled = F.avg_pool2d(planes, kernel_size=level.pool, stride=level.pool).permute(0, 2, 3, 1)
            grids = pooled.reshape(batch, n, n, side, side, dim)
        total = (n - 1) * stride + side
        canvas = grids.new_zeros(batch, total, total, dim)
        weight_canvas = grids.new_zeros(batch, total, total, 1)
        profile = torch.hann_window(side, periodic=False)
        weight = torch.outer(profile, profile).to(device=grids.device, dtype=grids.dtype).view(1, side, side, 1)
        for row in range(n):
            for col in range(n):
                top, left = row * stride, col * stride
                canvas[:, top : top + side, left : left + side, :] += grids[:, row, col] * weight
                weight_canvas[:, top : top + side, left : left + side, :] += weight
        return canvas / torch.clamp(weight_canvas, min=1e-6)


def hf_all_hidden_states(clip) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The authors' ``extract_hidden_states``: one call, ``output_hidden_states=True``, CLS sliced off each state."""

    def run(pixels: torch.Tensor) -> list[torch.Tensor]:
        outputs = clip(pixel_values=pixels, output_hidden_states=True)
        return [state[:, 1:] for state in outputs.hidden_states]

    return run


def authors_stage_for(model: MFRSVLM, hidden_states, *, include_global: bool = True) -> AuthorsDetailStage:
    config = model.config
    return AuthorsDetailStage(
        hidden_states,
        tower_dtype=model.dtype,
        patch_size=config.vision.patch_size,
        global_size=config.global_size,
        canvas_size=config.canvas_size,
        base_window=config.base_window,
        window_scales=config.window_scales,
        detail_layers=config.detail_layers,
        global_layer=config.global_hidden_index if include_global else None,
        factor=config.stack_factor,
    )


def vit_pass_flops(vision, blocks: int) -> int:
    """Matmul FLOPs of one tower pass through ``blocks`` blocks: patch embedding, q/k/v/out and MLP projections,
    attention scores and mixing (2 FLOPs per multiply-add; CLS included)."""
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    width, hidden = vision.hidden_size, vision.intermediate_size
    patch_embedding = 2 * (tokens - 1) * vision.num_channels * vision.patch_size**2 * width
    per_block = 2 * tokens * (4 * width * width + 2 * width * hidden) + 2 * 2 * tokens * tokens * width
    return patch_embedding + blocks * per_block


def detail_flops_per_image(config: MFRSVLMConfig, windows: int) -> int:
    """Global pass (up to its hidden state) + every window pass (up to the deepest kept layer)."""
    global_blocks = config.global_hidden_index
    window_blocks = max(config.detail_layers)
    return vit_pass_flops(config.vision, global_blocks) + windows * vit_pass_flops(config.vision, window_blocks)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.float(), theirs.float()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


# ----- prompts -----------------------------------------------------------------------------------------------------
def random_prompts(config: MFRSVLMConfig, batch: int, text_tokens: int, device: torch.device, seed: int):
    """``(pixels, rsfuse ids with one -200 placeholder after BOS, llava-hf ids with the image token × N)``."""
    generator = torch.Generator().manual_seed(seed)
    size = config.input_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    text = torch.randint(3, config.llm.vocab_size - 1, (batch, text_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    ours = torch.cat([text[:, :1], torch.full((batch, 1), config.image_token_index), text[:, 1:]], dim=1)
    image = torch.full((batch, config.num_visual_tokens), config.llm.vocab_size)  # llava_shaped's image token
    theirs = torch.cat([text[:, :1], image, text[:, 1:]], dim=1)
    return pixels.to(device), ours.to(device), theirs.to(device)


# ----- checks ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def logits_check(global_only: MFRSVLM, llava, device: torch.device, dtype: torch.dtype, text_tokens: int) -> dict:
    """rsfuse global-only vs transformers' LLaVA on the same weights and the same llava-hf ids."""
    config = global_only.config
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randn(1, 3, config.input_size, config.input_size, generator=generator).to(device, dtype)
    text = torch.randint(3, config.image_token_index, (1, text_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    ids = torch.cat([text[:, :1], torch.full((1, config.num_visual_tokens), config.image_token_index), text[:, 1:]], 1)
    ids = ids.to(device)
    output = global_only(pixels, ids)
    theirs = llava(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)).logits.float()
    # rsfuse re-lays the ids out (right padding): the same sequence first, then one padding slot per removed
    # placeholder (masked); compare the real positions.
    length = theirs.shape[1]
    if not bool(output.attention_mask[:, :length].all()) or bool(output.attention_mask[:, length:].any()):
        raise AssertionError("rsfuse's layout of the llava-hf ids does not start with the same sequence")
    ours = output.logits[:, :length].float()
    text_rows = ids[0] != config.image_token_index
    difference = (ours - theirs).abs()
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "positions": int(ids.shape[1]),
        "max_abs_difference": rounded(difference.max(), 6),
        "max_abs_logit": rounded(theirs.abs().max(), 4),
        "relative_difference": rounded(difference.max() / theirs.abs().max(), 6),
        "top1_agreement_text_positions": rounded(
            (ours[0, text_rows].argmax(-1) == theirs[0, text_rows].argmax(-1)).float().mean(), 4
        ),
    }


def token_agreement(eager: torch.Tensor, compiled: torch.Tensor) -> dict:
    """Greedy tokens of two runs of the same prompts: position-wise agreement, identical rows, common prefix."""
    eager, compiled = eager.cpu(), compiled.cpu()
    width = min(eager.shape[1], compiled.shape[1])
    same = eager[:, :width] == compiled[:, :width]
    prefix = [int(row.long().cumprod(0).sum()) for row in same]
    return {
        "rows": int(eager.shape[0]),
        "tokens_per_row": width,
        "token_agreement": rounded(same.float().mean(), 4),
        "identical_rows": int(sum(p == width for p in prefix)),
        "mean_common_prefix": rounded(sum(prefix) / len(prefix), 2),
    }


# ----- answers -----------------------------------------------------------------------------------------------------
def answer_systems(model: MFRSVLM, llava, pixels, ours_ids, hf_ids, names: Sequence[str]) -> dict[str, Callable]:
    pad = model.pad_token_id

    def rsfuse(compile_: bool):
        return lambda n: model.generate(pixels, ours_ids, max_new_tokens=n, eos_token_id=[], compile=compile_)

    def transformers_generate(n: int):
        output = llava.generate(
            input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids), max_new_tokens=n,
            min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=pad,
        )
        return output[:, hf_ids.shape[1]:]

    systems = {"llava-hf": transformers_generate, "rsfuse": rsfuse(False), "rsfuse-compile": rsfuse(True)}
    return {name: systems[name] for name in names if name in systems and (llava is not None or name != "llava-hf")}


@torch.no_grad()
def time_answers(systems: dict[str, Callable], new_tokens: int, repeats: int, device: torch.device) -> dict:
    """Per system: medians of 1-token and N-token answers (interleaved, alternating order), the decode step, the
    N-token answer's tokens, the warm-up time (compilation included)."""
    results = {}
    for name, run in systems.items():
        start = time.perf_counter()
        first, tokens = run(1), run(new_tokens)
        synchronize(device)
        if first.shape[1] != 1 or tokens.shape[1] != new_tokens:
            raise AssertionError(f"{name}: answers of {first.shape[1]} / {tokens.shape[1]} tokens, expected 1 / {new_tokens}")
        results[name] = {"warmup_s": round(time.perf_counter() - start, 2), "t1": [], "tn": [], "tokens": tokens}
    items = list(systems.items())
    for repeat in range(repeats):
        for name, run in items if repeat % 2 == 0 else items[::-1]:
            for key, count in (("t1", 1), ("tn", new_tokens)):
                synchronize(device)
                start = time.perf_counter()
                output = run(count)
                synchronize(device)
                results[name][key].append(time.perf_counter() - start)
                if count == new_tokens:
                    results[name]["tokens"] = output
    for entry in results.values():
        t1, tn = statistics.median(entry["t1"]), statistics.median(entry["tn"])
        entry.update(
            answer_1_s=round(t1, 4),
            answer_s=round(tn, 4),
            decode_step_ms=round(1000 * (tn - t1) / (new_tokens - 1), 3),
            answer_s_samples=[round(value, 4) for value in entry["tn"]],
            answer_1_s_samples=[round(value, 4) for value in entry["t1"]],
        )
    return results


@torch.no_grad()
def session_step_ms(model: MFRSVLM, pixels, ids, *, compile_: bool, steps: int, new_tokens: int,
                    device: torch.device) -> float:
    """Steady decode step of one warm ``GenerationSession``: ``steps`` steps timed together (no host syncs).

    The session has the shapes ``generate(max_new_tokens=new_tokens)`` gives it (a static cache of another length
    would be another compilation)."""
    warm = max(4, steps // 4)
    length = ids.shape[1] + model.config.num_visual_tokens + new_tokens
    session = GenerationSession(model, max_batch=ids.shape[0], max_length=length, compile=compile_)
    session.add(pixels, ids, params=SamplingParams(max_new_tokens=new_tokens, eos_token_ids=()))
    for _ in range(warm):
        session.step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        session.step()
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / steps


def decoder_bytes_per_token(model: MFRSVLM) -> int:
    """Bytes of decoder weights a one-token step reads: every parameter of ``model.llm`` but the embedding table
    (one row is gathered), unless it is tied to the output head."""
    embedding = model.llm.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.llm.lm_head.weight.data_ptr()
    return sum(
        p.numel() * p.element_size() for p in model.llm.parameters() if tied or p.data_ptr() != embedding.data_ptr()
    )


def dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters  # noqa: PLC0415
    except ImportError:
        return {}
    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
    }


# ----- sections ----------------------------------------------------------------------------------------------------
def section_checks(rec: Recorder, global_only, llava, args, device, dtype) -> None:
    rec.put("checks", "llava_logits", logits_check(global_only, llava, device, dtype, args.prompt_tokens))
    if not args.tiny:
        tiny_global = random_mfrsvlm(
            llava_shaped(MFRSVLMConfig.tiny(attention_backend=args.attention_backend)), device, torch.float32, seed=11
        )
        tiny_llava = build_llava_hf(tiny_global, device, torch.float32)
        rec.put("checks", "llava_logits_tiny_fp32", logits_check(tiny_global, tiny_llava, device, torch.float32, 16))
        del tiny_global, tiny_llava
        release(device)


def section_answers(rec: Recorder, name: str, model, llava, args, device, batch: int, repeats: int) -> dict:
    config = model.config
    pixels, ours_ids, hf_ids = random_prompts(config, batch, args.prompt_tokens, device, seed=batch)
    pixels = pixels.to(model.dtype)
    systems = answer_systems(model, llava, pixels, ours_ids, hf_ids, SYSTEMS)
    results = time_answers(systems, args.new_tokens, repeats, device)
    summary = {}
    for system, entry in results.items():
        summary[system] = {
            key: entry[key]
            for key in ("warmup_s", "answer_1_s", "answer_s", "decode_step_ms", "answer_s_samples", "answer_1_s_samples")
        }
        summary[system]["answers_per_s"] = round(batch / entry["answer_s"], 3)
    if "rsfuse" in results and "rsfuse-compile" in results:
        summary["compile_vs_eager_tokens"] = token_agreement(results["rsfuse"]["tokens"], results["rsfuse-compile"]["tokens"])
    summary["dynamo"] = dynamo_counters()
    summary["batch"], summary["new_tokens"], summary["prompt_text_tokens"] = batch, args.new_tokens, args.prompt_tokens
    summary["sequence_positions"] = int(hf_ids.shape[1])
    if batch == 1:
        for system, compile_ in (("rsfuse", False), ("rsfuse-compile", True)):
            if system in summary:
                summary[system]["session_step_ms"] = round(
                    session_step_ms(model, pixels, ours_ids, compile_=compile_, steps=args.session_steps,
                                    new_tokens=args.new_tokens, device=device), 3
                )
    rec.put(name, "answers", summary)
    return summary


def section_decode_floor(rec: Recorder, model, answers: dict, references: dict) -> None:
    weights = decoder_bytes_per_token(model)
    floor_ms = 1000 * weights / (references["read_gb_per_s"] * 1e9)
    record = {
        "decoder_bytes_per_token": weights,
        "decoder_gib_per_token": round(weights / 2**30, 3),
        "read_gb_per_s": references["read_gb_per_s"],
        "floor_ms": round(floor_ms, 3),
    }
    for system in SYSTEMS:
        if system in answers:
            step = answers[system]["decode_step_ms"]
            record[system] = {"step_ms": step, "ratio_to_floor": round(step / floor_ms, 3)}
            if "session_step_ms" in answers[system]:
                session = answers[system]["session_step_ms"]
                record[system].update(session_step_ms=session, session_ratio_to_floor=round(session / floor_ms, 3))
    rec.put("decode_floor", "decode", record)


@torch.no_grad()
def section_detail(rec: Recorder, model, clip, args, device, references: dict, *, name: str, batches: Sequence[int],
                   authors: bool) -> dict:
    config = model.config
    windows = model.canvas.windows_per_image
    flops = detail_flops_per_image(config, windows)
    stage = authors_stage_for(model, hf_all_hidden_states(clip)) if authors else None
    if authors:
        rec.put(name, "authors_real_code_reference", AUTHORS_REAL_CODE)
    out = {
        "windows_per_image": windows,
        "tower_passes_per_image": windows + 1,
        "matmul_gflop_per_pass": round(vit_pass_flops(config.vision, config.vision.num_hidden_layers) / 1e9, 1),
        "issue_gflop_per_paper_pass": PAPER_PASS_GFLOP,
        "matmul_tflop_per_image": round(flops / 1e12, 3),
    }
    for batch in batches:
        generator = torch.Generator().manual_seed(100 + batch)
        pixels = torch.randn(batch, 3, config.input_size, config.input_size, generator=generator).to(device, model.dtype)
        ours_s, ours_samples, (ours_global, ours_stacks) = median_seconds(
            lambda: model.vision_features(pixels), device, args.detail_repeats
        )
        entry = {
            "rsfuse_s": round(ours_s, 4),
            "rsfuse_ms_per_image": round(1000 * ours_s / batch, 2),
            "rsfuse_s_samples": [round(s, 4) for s in ours_samples],
            "rsfuse_peak_gib": peak_gib(lambda: model.vision_features(pixels), device),
            "tflops": round(flops * batch / ours_s / 1e12, 4),
            "fraction_of_matmul": round(flops * batch / ours_s / 1e12 / references["matmul_tflops"], 4),
        }
        if stage is not None:
            theirs_s, theirs_samples, (their_global, their_stacks) = median_seconds(
                lambda: stage(pixels), device, args.authors_repeats
            )
            their_stacks = torch.stack(their_stacks, dim=1)
            entry.update(
                authors_s=round(theirs_s, 4),
                authors_ms_per_image=round(1000 * theirs_s / batch, 2),
                authors_s_samples=[round(s, 4) for s in theirs_samples],
                authors_peak_gib=peak_gib(lambda: stage(pixels), device),
                speedup_vs_authors=round(theirs_s / ours_s, 3),
                agreement={
                    "global_relative_difference": rounded(relative_difference(ours_global, their_global), 6),
                    "stacks_relative_difference": rounded(relative_difference(ours_stacks, their_stacks), 6),
                },
            )
            del their_global, their_stacks
        del ours_global, ours_stacks, pixels
        release(device)
        out[f"batch{batch}"] = entry
        rec.put(name, f"batch{batch}", entry)
    rec.put(name, "per_image", {k: v for k, v in out.items() if not k.startswith("batch")})
    return out


@contextlib.contextmanager
def compiled_tower_blocks(tower):
    """Every block of ``tower`` wrapped in ``torch.compile`` for the duration (the modules are restored after)."""
    original = tower.encoder.layers
    tower.encoder.layers = nn.ModuleList([torch.compile(block) for block in original])
    try:
        yield
    finally:
        tower.encoder.layers = original


def section_tower(rec: Recorder, model, args, device, references: dict) -> None:
    """The detail stage with compiled tower blocks (the first call, which compiles, is timed apart)."""
    batch = args.tower_batch or max(args.detail_batches)
    config = model.config
    with compiled_tower_blocks(model.vision_tower), torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        warm = torch.randn(batch, 3, config.input_size, config.input_size, generator=generator).to(device, model.dtype)
        start = time.perf_counter()
        model.vision_features(warm)
        synchronize(device)
        rec.put("tower", "compile_s", round(time.perf_counter() - start, 2))
        del warm
        section_detail(rec, model, None, args, device, references, name="tower", batches=[batch], authors=False)
        rec.put("tower", "dynamo", dynamo_counters())


# ----- summary -----------------------------------------------------------------------------------------------------
def goal_rows(results: dict, args: argparse.Namespace) -> list[dict]:
    """The issue's goals, each with the run's value (None where its section did not run)."""
    sections, rows = results["sections"], []

    def get(*path):
        node = sections
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    n = args.new_tokens
    answer, llava = (get("answers1", "answers", s, "answer_s") for s in ("rsfuse-compile", "llava-hf"))
    rows.append({"goal": f"{n}-token answer, batch 1, rsfuse compile / transformers LLaVA", "target": "<= 0.8",
                 "value": None if answer is None or llava is None else round(answer / llava, 3)})
    rows.append({"goal": f"{n}-token answer, batch 1, rsfuse compile (s)", "target": "aim <= 0.6", "value": answer})
    rows.append({"goal": f"decode step (t{n} - t1)/{n - 1}, rsfuse compile / weight-streaming floor", "target": "<= 2",
                 "value": get("decode_floor", "decode", "rsfuse-compile", "ratio_to_floor")})
    ours, theirs = (get("batch", "answers", s, "answers_per_s") for s in ("rsfuse-compile", "llava-hf"))
    rows.append({"goal": f"answers/s at batch {args.batch}, rsfuse compile / transformers LLaVA", "target": "report",
                 "value": None if ours is None or theirs is None else round(ours / theirs, 3)})
    batch = max(args.detail_batches)
    fractions = [value for value in (get("detail", f"batch{batch}", "fraction_of_matmul"),
                                     get("tower", f"batch{args.tower_batch or batch}", "fraction_of_matmul"))
                 if value is not None]
    rows.append({"goal": f"detail stage, batch {batch}, fraction of measured matmul throughput (best of eager / "
                         "compiled tower)", "target": ">= 0.6", "value": max(fractions) if fractions else None})
    return rows


def collect_figures(results: dict) -> dict:
    """The headline figures in one flat mapping (None where a section did not run)."""
    sections = results["sections"]

    def get(*path):
        node = sections
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def per_system(section: str, key: str, systems=SYSTEMS) -> dict:
        return {system: get(section, "answers", system, key) for system in systems}

    references = get("references", "references") or {}
    figures = {
        "matmul_tflops": references.get("matmul_tflops"),
        "read_gb_per_s": references.get("read_gb_per_s"),
        "llava_logits_relative_difference": get("checks", "llava_logits", "relative_difference"),
        "llava_logits_top1_agreement": get("checks", "llava_logits", "top1_agreement_text_positions"),
        "answer_b1_s": per_system("answers1", "answer_s"),
        "first_token_b1_s": per_system("answers1", "answer_1_s"),
        "decode_step_b1_ms": per_system("answers1", "decode_step_ms"),
        "session_step_b1_ms": per_system("answers1", "session_step_ms", SYSTEMS[1:]),
        "decode_floor_ms": get("decode_floor", "decode", "floor_ms"),
        "decode_step_over_floor": {s: get("decode_floor", "decode", s, "ratio_to_floor") for s in SYSTEMS},
        "answer_b1_over_llava": None,
        "compile_vs_eager_token_agreement": {
            name: get(name, "answers", "compile_vs_eager_tokens", "token_agreement") for name in ("answers1", "batch")
        },
        "answers_per_s_batch": per_system("batch", "answers_per_s"),
        "detail": {},
    }
    llava = figures["answer_b1_s"]["llava-hf"]
    if llava:
        figures["answer_b1_over_llava"] = {
            s: round(v / llava, 3) for s, v in figures["answer_b1_s"].items() if v is not None and s != "llava-hf"
        }
    for section, label in (("detail", "eager"), ("tower", "compiled")):
        for key, entry in (sections.get(section) or {}).items():
            if not key.startswith("batch"):
                continue
            figures["detail"][f"{label}_{key}"] = {
                name: entry.get(name)
                for name in ("rsfuse_ms_per_image", "fraction_of_matmul", "rsfuse_peak_gib", "authors_ms_per_image",
                             "authors_peak_gib", "speedup_vs_authors", "agreement")
                if name in entry
            }
    return figures


def table(results: dict) -> str:
    sections = results["sections"]
    setup = sections.get("setup", {}).get("setup", {})
    lines = [f"# gpu_paper_scale: {setup.get('device_name')} | torch {setup.get('torch')} | transformers "
             f"{setup.get('transformers')} | {setup.get('config')} | {setup.get('dtype')}", ""]
    references = sections.get("references", {}).get("references")
    if references:
        lines.append(f"references: matmul {references['matmul_size']}^3 {references['matmul_tflops']} TFLOP/s; "
                     f"read-only bandwidth {references['read_gb_per_s']} GB/s {references['read_gb_per_s_by_kernel']}")
    lines += ["", "| measurement | llava-hf | rsfuse eager | rsfuse compile |", "| --- | --- | --- | --- |"]
    for name in ("answers1", "batch"):
        answers = sections.get(name, {}).get("answers")
        if not answers:
            continue
        batch = answers["batch"]

        def cell(system, key, scale=1.0, unit=""):
            value = answers.get(system, {}).get(key)
            return "-" if value is None else f"{value * scale:.4g}{unit}"

        lines.append(f"| batch {batch}: {answers['new_tokens']}-token answer | " + " | ".join(
            cell(s, "answer_s", unit=" s") for s in SYSTEMS) + " |")
        lines.append(f"| batch {batch}: 1-token answer | " + " | ".join(cell(s, "answer_1_s", unit=" s") for s in SYSTEMS) + " |")
        lines.append(f"| batch {batch}: decode step (tN - t1)/(N - 1) | " + " | ".join(
            cell(s, "decode_step_ms", unit=" ms") for s in SYSTEMS) + " |")
        if batch == 1:
            lines.append("| batch 1: steady session step | - | " + " | ".join(
                cell(s, "session_step_ms", unit=" ms") for s in SYSTEMS[1:]) + " |")
        lines.append(f"| batch {batch}: answers/s | " + " | ".join(cell(s, "answers_per_s") for s in SYSTEMS) + " |")
        agreement = answers.get("compile_vs_eager_tokens")
        if agreement:
            lines.append(f"| batch {batch}: compiled vs eager greedy tokens | | | {agreement['token_agreement']:.3f} agree, "
                         f"{agreement['identical_rows']}/{agreement['rows']} rows identical |")
    floor = sections.get("decode_floor", {}).get("decode")
    if floor:
        lines.append(f"\ndecode floor: {floor['decoder_gib_per_token']} GiB / {floor['read_gb_per_s']} GB/s = "
                     f"{floor['floor_ms']} ms; " + "; ".join(
                         f"{s} {floor[s]['ratio_to_floor']}x" for s in SYSTEMS if s in floor))
    for name, label in (("detail", "eager tower"), ("tower", "compiled tower blocks")):
        detail = sections.get(name)
        if not detail:
            continue
        lines += ["", f"| detail stage ({label}) | rsfuse ms/image | TFLOP/s | fraction of matmul | authors' way "
                  "ms/image | speed-up | peak GiB rsfuse / authors | agreement (global / stacks) |", "| --- " * 8 + "|"]
        for key, entry in detail.items():
            if not key.startswith("batch"):
                continue
            agreement = entry.get("agreement", {})
            lines.append(
                f"| {key} | {entry['rsfuse_ms_per_image']} | {entry['tflops']:.4g} | {entry['fraction_of_matmul']} | "
                f"{entry.get('authors_ms_per_image', '-')} | {entry.get('speedup_vs_authors', '-')} | "
                f"{entry.get('rsfuse_peak_gib')} / {entry.get('authors_peak_gib', '-')} | "
                f"{agreement.get('global_relative_difference', '-')} / {agreement.get('stacks_relative_difference', '-')} |"
            )
    reference = (sections.get("detail") or {}).get("authors_real_code_reference")
    if reference:
        lines.append(f"\nthe authors' real code (issue 14): {reference['ms_per_image']} ms/image, peak {reference['peak_gib']} GiB, "
                     f"{reference['machine']}")
    checks = sections.get("checks", {})
    for key, check in checks.items():
        lines.append(f"\ncheck {key}: relative difference {check['relative_difference']}, top-1 agreement "
                     f"{check['top1_agreement_text_positions']} ({check['dtype']})")
    lines += ["", "| goal | target | value |", "| --- | --- | --- |"]
    lines += [f"| {row['goal']} | {row['target']} | {row['value']} |" for row in results.get("goals", [])]
    if results.get("skipped"):
        lines.append(f"\nskipped: {results['skipped']}")
    return "\n".join(lines)


# ----- main --------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch._logging.set_logs(recompiles=True, perf_hints=True)
    torch.manual_seed(0)
    rec = Recorder(args.out)
    try:
        import transformers  # noqa: PLC0415

        transformers_version = transformers.__version__
        transformers.logging.set_verbosity_error()
    except ImportError:
        transformers_version = None
    preset = MFRSVLMConfig.tiny if args.tiny else MFRSVLMConfig.paper
    # The released checkpoints' window layout: what the authors' code computes, so the two detail stages agree.
    config = preset(attention_backend=args.attention_backend, window_layout="reference")
    rec.put("setup", "setup", {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch": torch.__version__, "transformers": transformers_version, "python": platform.python_version(),
        "config": "tiny" if args.tiny else "paper", "dtype": args.dtype, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "git_commit": git_commit(), "argv": sys.argv[1:] if argv is None else list(argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    })
    references = measure_references(device, dtype, args.tiny)
    rec.put("references", "references", references)

    start = time.perf_counter()
    model = random_mfrsvlm(config, device, dtype, seed=0)
    global_only = llava = clip = None
    if transformers_version is not None:
        global_only = random_mfrsvlm(llava_shaped(config), device, dtype, seed=1)
        llava = build_llava_hf(global_only, device, dtype)
        clip = build_hf_clip(model, device, dtype)
    synchronize(device)
    rec.put("setup", "build_s", round(time.perf_counter() - start, 2))
    if transformers_version is None:
        rec.results["skipped"]["transformers"] = "not installed: no LLaVA baseline, no authors' way, no logits check"

    def budget_left(section: str, reserve: float) -> bool:
        if rec.elapsed() < args.budget_s - reserve:
            return True
        rec.results["skipped"][section] = f"budget: {rec.elapsed():.0f} s of {args.budget_s:.0f} s used"
        rec.save()
        return False

    if "checks" in args.sections and llava is not None:
        section_checks(rec, global_only, llava, args, device, dtype)
    if "answers1" in args.sections:
        answers = section_answers(rec, "answers1", model, llava, args, device, batch=1, repeats=args.repeats)
        section_decode_floor(rec, model, answers, references)
    if "detail" in args.sections:
        section_detail(rec, model, clip, args, device, references, name="detail", batches=args.detail_batches,
                       authors=clip is not None)
    if "batch" in args.sections and budget_left("batch", reserve=150):
        section_answers(rec, "batch", model, llava, args, device, batch=args.batch, repeats=args.batch_repeats)
    if "tower" in args.sections and budget_left("tower", reserve=90):
        section_tower(rec, model, args, device, references)

    rec.results["goals"] = goal_rows(rec.results, args)
    rec.results["figures"] = collect_figures(rec.results)
    rec.save()
    text = table(rec.results)
    (args.out / "table.md").write_text(text + "\n")
    print(text, flush=True)
    print(f"\nwrote {rec.path} after {rec.elapsed():.0f} s", flush=True)
    return rec.results


if __name__ == "__main__":
    main()
