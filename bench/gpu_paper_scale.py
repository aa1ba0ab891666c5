"""MF-RSVLM at paper scale on one GPU, random weights: where the time and memory go, against the baselines that matter.

One run prints one JSON object per measurement (and a summary) for:

1. ``matmul``: a measured bf16 GEMM throughput (TFLOP/s) and device-to-device copy bandwidth (GB/s) — the references
   every other number is read against.
2. ``canvas``: the detail stage (58 window passes + stitching + stacks) at batch 1 and 8: rsfuse's
   ``MultiScaleCanvas`` (all windows of a scale in one batched tower call, only layers 8/16/24 kept) vs the authors'
   approach (one tower call per window, all 25 hidden states kept until stitching). Median time and peak memory.
3. ``answer``: a full MF-RSVLM-7B answer — 59 ViT passes, prefill with injection, ``--new-tokens`` greedy tokens with the
   KV cache — against transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5-7B shape, random weights) generating
   the same number of tokens in the same run.
4. ``decode``: rsfuse's per-token decode step time vs the weight-streaming floor (decoder bytes / measured copy
   bandwidth).
5. ``reference_generation``: rsfuse run the reference way (``use_cache=False``: every token re-encodes the 59 views
   and re-runs the whole prefix), timed over ``--reference-tokens`` tokens and extrapolated to ``--new-tokens``.

    python bench/gpu_paper_scale.py                       # one H100/H200, bf16, paper sizes
    python bench/gpu_paper_scale.py --tiny --device cpu   # seconds on a CPU: the same code paths at tiny sizes
"""

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import time
from typing import Callable

import torch
from einops import rearrange
from torch import nn

from rsfuse.encoders.canvas import MultiScaleCanvas
from rsfuse.encoders.stitch import blend_weights
from rsfuse.encoders.windows import cut_windows, resize_to
from rsfuse.llm.cache import StaticKVCache
from rsfuse.model import MFRSVLM, MFRSVLMConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--batches", default=None, help="canvas batch sizes (default 1,8; with --tiny 1)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64; with --tiny 8")
    parser.add_argument("--reference-tokens", type=int, default=None, help="tokens timed without KV cache (8; tiny 2)")
    parser.add_argument("--prompt-tokens", type=int, default=48, help="text tokens of the question prompt")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (3; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (1; tiny 0)")
    parser.add_argument("--skip-llava", action="store_true", help="do not build the transformers LLaVA baseline")
    args = parser.parse_args()
    defaults = {"batches": "1", "new_tokens": 8, "reference_tokens": 2, "repeats": 1, "warmup": 0} if args.tiny else {
        "batches": "1,8", "new_tokens": 64, "reference_tokens": 8, "repeats": 3, "warmup": 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ----- measurement helpers ---------------------------------------------------------------------------------------------
def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 1


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int | None = None) -> tuple[float, object]:
    """Median wall seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs, and the last result."""
    result = None
    for _ in range(WARMUP if warmup is None else warmup):
        result = fn()
    synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak allocated bytes above the starting point while ``fn`` runs (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    synchronise(device)
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronise(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return peak


def report(kind: str, **values) -> dict:
    record = {"measure": kind, **values}
    print(json.dumps(record), flush=True)
    return record


def gib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**30, 3)


# ----- 1. reference throughputs ----------------------------------------------------------------------------------------
def measure_matmul(device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    size = 1024 if tiny else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds, _ = timed(lambda: a @ b, device, repeats=5 if tiny else 20, warmup=2)
    tflops = 2 * size**3 / seconds / 1e12
    buffer = torch.empty(256 * 2**20 if not tiny else 16 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(buffer)
    copy_seconds, _ = timed(lambda: target.copy_(buffer), device, repeats=10, warmup=2)
    bandwidth = 2 * buffer.numel() / copy_seconds / 1e9  # read + write
    return report("matmul", size=size, dtype=str(dtype), tflops=round(tflops, 2), copy_gb_per_s=round(bandwidth, 1))


# ----- 2. canvas stage -------------------------------------------------------------------------------------------------
class ReferenceCanvas(nn.Module):
    """The authors' detail stage: a Python loop over windows, each through the tower with every hidden state kept
    (``output_hidden_states=True``), all windows' states held until they are stitched; same windows and blending."""

    def __init__(self, canvas: MultiScaleCanvas) -> None:
        super().__init__()
        self.canvas = canvas
        self.tower = canvas.tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        canvas = self.canvas
        canvas_pixels = resize_to(pixels, canvas.canvas_size)
        every = list(range(self.tower.num_layers + 1))
        per_scale = []
        for grid in canvas.grids:
            windows = cut_windows(canvas_pixels, grid, layout=canvas.window_layout)
            kept_states = []
            for window in windows.split(1):  # one window per tower call
                kept_states.append(self.tower.forward_intermediates(resize_to(window, grid.base_window), every, stop_early=False))
            side, pool, total = grid.token_side, grid.pool, canvas.canvas_tokens
            weight = blend_weights(side, canvas.blend).to(pixels.device, torch.float32)
            layers = []
            for layer in canvas.layers:
                states = torch.cat([states[layer] for states in kept_states])  # [B·n², N, C]
                grids = rearrange(states, "k (h w) c -> k c h w", h=grid.base_side)
                grids = nn.functional.avg_pool2d(grids.float(), pool) if pool > 1 else grids.float()
                grids = rearrange(grids, "(b r q) c h w -> b r q c h w", b=pixels.shape[0], r=grid.per_side)
                accumulated = pixels.new_zeros(pixels.shape[0], grids.shape[3], total, total, dtype=torch.float32)
                norm = pixels.new_zeros(total, total, dtype=torch.float32)
                for row in range(grid.per_side):
                    for col in range(grid.per_side):
                        top, left = row * grid.stride_tokens, col * grid.stride_tokens
                        accumulated[:, :, top : top + side, left : left + side] += grids[:, row, col] * weight
                        norm[top : top + side, left : left + side] += weight
                layers.append(rearrange(accumulated / norm.clamp_min(1e-6), "b c h w -> b h w c").to(pixels.dtype))
            per_scale.append(torch.stack(layers, dim=1))
        return torch.stack(per_scale, dim=1)


def measure_canvas(model: MFRSVLM, batches: list[int], device, dtype, repeats: int) -> list[dict]:
    records = []
    canvas = model.canvas
    reference = ReferenceCanvas(canvas)
    size = model.config.global_size
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
        with torch.no_grad():
            ours_seconds, ours_out = timed(lambda: canvas(pixels), device, repeats)
            ref_seconds, ref_out = timed(lambda: reference(pixels), device, max(1, repeats // 2))
            ours_peak = peak_bytes(lambda: canvas(pixels), device)
            ref_peak = peak_bytes(lambda: reference(pixels), device)
        agreement = (ours_out.float() - ref_out.float()).abs().max().item() / max(ref_out.float().abs().max().item(), 1e-6)
        records.append(
            report(
                "canvas",
                batch=batch,
                windows_per_image=canvas.windows_per_image,
                rsfuse_s=round(ours_seconds, 4),
                reference_s=round(ref_seconds, 4),
                speedup=round(ref_seconds / ours_seconds, 2),
                rsfuse_peak_gib=gib(ours_peak),
                reference_peak_gib=gib(ref_peak),
                max_relative_difference=round(agreement, 4),
            )
        )
        del ours_out, ref_out
    return records


# ----- 3-5. full answers -----------------------------------------------------------------------------------------------
@torch.no_grad()
def random_model(config: MFRSVLMConfig, device: torch.device, dtype: torch.dtype) -> MFRSVLM:
    """An ``MFRSVLM`` with random weights, built on the meta device and materialised in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = MFRSVLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    for name, parameter in model.named_parameters():
        if parameter.ndim == 1 and name.endswith("weight"):
            parameter.fill_(1.0)
        elif name.endswith("residual_scale"):
            parameter.fill_(config.residual_scale_init)
        elif parameter.ndim == 1:
            parameter.zero_()
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    model.llm.model.rotary_emb.reset_parameters(device)
    return model.eval()


def prompt_ids(batch: int, tokens: int, vocab: int, device) -> torch.Tensor:
    ids = torch.randint(3, vocab - 1, (batch, tokens), device=device, generator=torch.Generator(device=device).manual_seed(1))
    ids[:, 0] = 1
    return ids


def measure_rsfuse_answer(model: MFRSVLM, args, device, dtype) -> dict:
    size = model.config.input_size
    pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    ids = prompt_ids(1, args.prompt_tokens, model.config.llm.vocab_size, device)
    new = args.new_tokens

    def answer():
        return model.generate(pixels, ids, max_new_tokens=new, eos_token_id=[])

    seconds, tokens = timed(answer, device, args.repeats)
    peak = peak_bytes(answer, device)
    with torch.no_grad():
        encode_seconds, _ = timed(lambda: model.encode_images(pixels), device, args.repeats)
        sequence, stacks, selected = model.prepare_inputs(pixels, ids, pad_left=True)
        length = sequence.inputs_embeds.shape[1] + new

        def prefill():
            cache = StaticKVCache.for_model(model.config.llm, batch_size=1, max_length=length, dtype=dtype, device=device)
            unmasked = dataclasses.replace(sequence, attention_mask=None)  # batch 1, no padding: as generate() does
            return model.run_decoder(unmasked, stacks, selected, cache=cache, logits_to_keep=1)

        prefill_seconds, output = timed(prefill, device, args.repeats)
        cache = output.past_key_values
        position = sequence.position_ids[:, -1:]
        token = output.logits[:, -1].argmax(-1, keepdim=True)
        step_times = []
        for _ in range(min(new, 32)):
            position = position + 1
            synchronise(device)
            start = time.perf_counter()
            step = model.llm(token, position_ids=position, past_key_values=cache, use_cache=True)  # unpadded: no mask
            token = step.logits[:, -1].argmax(-1, keepdim=True)
            synchronise(device)
            step_times.append(time.perf_counter() - start)
    return report(
        "answer_rsfuse",
        new_tokens=int(tokens.shape[1]),
        tower_passes_per_image=1 + model.canvas.windows_per_image,
        total_s=round(seconds, 4),
        encode_images_s=round(encode_seconds, 4),
        prefill_s=round(prefill_seconds, 4),
        decode_step_ms=round(1000 * statistics.median(step_times), 3),
        peak_gib=gib(peak),
    )


def measure_reference_generation(model: MFRSVLM, args, device, dtype) -> dict:
    size = model.config.input_size
    pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    ids = prompt_ids(1, args.prompt_tokens, model.config.llm.vocab_size, device)
    count = args.reference_tokens
    seconds, _ = timed(
        lambda: model.generate(pixels, ids, max_new_tokens=count, eos_token_id=[], use_cache=False), device, 1
    )
    return report(
        "reference_generation",
        timed_tokens=count,
        seconds=round(seconds, 4),
        per_token_s=round(seconds / count, 4),
        extrapolated_s_for_new_tokens=round(seconds / count * args.new_tokens, 2),
        new_tokens=args.new_tokens,
    )


def decoder_bytes(model: MFRSVLM) -> int:
    return sum(p.numel() * p.element_size() for p in model.llm.parameters())


def build_llava(config: MFRSVLMConfig, device, dtype):
    """transformers' LLaVA-1.5 with the same tower and decoder shapes, random weights."""
    import transformers  # noqa: PLC0415

    vision = transformers.CLIPVisionConfig(**{k: v for k, v in config.vision.to_dict().items() if k != "model_type"})
    llm = config.llm
    image_token = llm.vocab_size  # one extra row, as llava-1.5-7b-hf has (<image> = 32000 of 32064 in the hub files)
    text = transformers.LlamaConfig(
        vocab_size=llm.vocab_size + 64,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        rms_norm_eps=llm.rms_norm_eps,
        max_position_embeddings=llm.max_position_embeddings,
        pad_token_id=llm.pad_token_id,
    )
    llava_config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        image_seq_length=config.num_visual_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    llava_config._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.LlavaForConditionalGeneration(llava_config)
    return model.to(dtype=dtype).eval(), image_token


def measure_llava_answer(config: MFRSVLMConfig, args, device, dtype) -> dict:
    model, image_token = build_llava(config, device, dtype)
    size = config.global_size
    pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    text = prompt_ids(1, args.prompt_tokens, config.llm.vocab_size, device)
    visual = torch.full((1, config.num_visual_tokens), image_token, device=device, dtype=torch.long)
    ids = torch.cat([text[:, :1], visual, text[:, 1:]], dim=1)
    new = args.new_tokens

    def answer():
        return model.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.no_grad():
        seconds, tokens = timed(answer, device, args.repeats)
        peak = peak_bytes(answer, device)
    record = report(
        "answer_llava_transformers",
        new_tokens=int(tokens.shape[1] - ids.shape[1]),
        tower_passes_per_image=1,
        total_s=round(seconds, 4),
        peak_gib=gib(peak),
    )
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def main() -> None:
    global WARMUP
    args = parse_args()
    WARMUP = args.warmup
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny(attention_backend="sdpa") if args.tiny else MFRSVLMConfig.paper(attention_backend="sdpa")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report("setup", device=name, dtype=args.dtype, config="tiny" if args.tiny else "paper", torch=torch.__version__)
    results = {"matmul": measure_matmul(device, dtype, args.tiny)}
    model = random_model(config, device, dtype)
    results["canvas"] = measure_canvas(model, [int(b) for b in args.batches.split(",")], device, dtype, args.repeats)
    results["rsfuse"] = measure_rsfuse_answer(model, args, device, dtype)
    weight_bytes = decoder_bytes(model)
    floor_ms = 1000 * weight_bytes / (results["matmul"]["copy_gb_per_s"] * 1e9 / 2)  # reads only: half the copy traffic
    results["decode"] = report(
        "decode",
        decoder_gib=gib(weight_bytes),
        step_ms=results["rsfuse"]["decode_step_ms"],
        weight_streaming_floor_ms=round(floor_ms, 3),
        ratio_to_floor=round(results["rsfuse"]["decode_step_ms"] / floor_ms, 2),
    )
    results["reference"] = measure_reference_generation(model, args, device, dtype)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_llava:
        results["llava"] = measure_llava_answer(config, args, device, dtype)
        report(
            "summary",
            rsfuse_answer_s=results["rsfuse"]["total_s"],
            llava_answer_s=results["llava"]["total_s"],
            rsfuse_over_llava=round(results["rsfuse"]["total_s"] / results["llava"]["total_s"], 2),
            reference_way_extrapolated_s=results["reference"]["extrapolated_s_for_new_tokens"],
        )


if __name__ == "__main__":
    main()
