"""Decoder forward time: rsfuse ``LlamaForCausalLM`` vs transformers ``LlamaForCausalLM`` (same config, same weights).

Both models run in the same process on the same inputs, timed interleaved with alternating order
(rsfuse, HF, HF, rsfuse, ...) under ``torch.inference_mode``; the report gives medians and the ratio
rsfuse / transformers (goal <= 1.0). HF uses its SDPA attention. On a loaded machine use
``--threads 1 --clock process``. Example:

    python bench/decoder.py --hidden 512 --layers 4 --heads 8 --kv-heads 8 --seq 256 --batch 2
"""

import argparse
import platform
import statistics
import time

import torch
import transformers

from rsfuse.llm import LlamaConfig, LlamaForCausalLM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--padding", action="store_true", help="left-pad half the batch (exercises the mask path)")
    parser.add_argument("--decode", type=int, default=0, help="also time this many cached one-token decode steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall",
        help="wall: perf_counter; process: CPU time of this process (steadier on a loaded machine, CPU only)",
    )
    return parser.parse_args()


def build_models(args: argparse.Namespace) -> tuple[LlamaForCausalLM, transformers.LlamaForCausalLM]:
    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(4096, args.seq + args.decode),
        rms_norm_eps=1e-5,
    )
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hf_model = transformers.LlamaForCausalLM(hf_config).to(device=args.device, dtype=dtype).eval()
    ours = LlamaForCausalLM(LlamaConfig.from_dict(hf_config.to_dict()), attention_backend="sdpa")
    ours.load_state_dict(hf_model.state_dict())
    return ours.to(device=args.device, dtype=dtype).eval(), hf_model


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(
    calls: dict[str, callable], *, warmup: int, repeats: int, device: str, clock: str = "wall"
) -> dict[str, list[float]]:
    now = time.process_time if clock == "process" else time.perf_counter
    for _ in range(warmup):
        for call in calls.values():
            call()
    timings: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for repeat in range(repeats):
        for name, call in order if repeat % 2 == 0 else order[::-1]:  # alternate who goes first
            synchronise(device)
            start = now()
            call()
            synchronise(device)
            timings[name].append(now() - start)
    return timings


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf_model = build_models(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    mask = None
    if args.padding:
        mask = torch.ones_like(ids)
        mask[: args.batch // 2, : args.seq // 4] = 0
    hf_positions = None if mask is None else (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    with torch.inference_mode():
        ours_logits = ours(ids, attention_mask=mask).logits
        hf_logits = hf_model(ids, attention_mask=mask, position_ids=hf_positions).logits
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        max_difference = (ours_logits[real].float() - hf_logits[real].float()).abs().max().item()
        calls = {
            "rsfuse": lambda: ours(ids, attention_mask=mask),
            "transformers": lambda: hf_model(ids, attention_mask=mask, position_ids=hf_positions),
        }
        timings = time_calls(calls, warmup=args.warmup, repeats=args.repeats, device=args.device, clock=args.clock)
        if args.decode:
            def decode_ours():
                cache = ours(ids, use_cache=True).past_key_values
                token = ids[:, -1:]
                for _ in range(args.decode):
                    ours(token, past_key_values=cache, use_cache=True)

            def decode_hf():
                cache = hf_model(ids, use_cache=True).past_key_values
                token = ids[:, -1:]
                for _ in range(args.decode):
                    hf_model(token, past_key_values=cache, use_cache=True)

            timings.update(
                {f"{name} prefill+{args.decode} decode": values for name, values in time_calls(
                    {"rsfuse": decode_ours, "transformers": decode_hf},
                    warmup=1, repeats=max(3, args.repeats // 3), device=args.device, clock=args.clock,
                ).items()}
            )

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''} | torch {torch.__version__} | "
          f"transformers {transformers.__version__} | threads {torch.get_num_threads()} | device {args.device} | "
          f"clock {args.clock}")
    print(f"config: hidden {args.hidden}, intermediate {args.intermediate}, layers {args.layers}, heads {args.heads}, "
          f"kv heads {args.kv_heads}, vocab {args.vocab}, batch {args.batch}, seq {args.seq}, dtype {args.dtype}, "
          f"padding {args.padding}")
    print(f"max |logit difference| on real tokens: {max_difference:.2e}")
    for name, value in medians.items():
        print(f"{name:>40s}: median {value * 1000:8.2f} ms, min {min(timings[name]) * 1000:8.2f} ms "
              f"over {len(timings[name])} runs")
    print(f"ratio rsfuse / transformers (forward): {medians['rsfuse'] / medians['transformers']:.3f}")
    if args.decode:
        key = f"prefill+{args.decode} decode"
        print(f"ratio rsfuse / transformers ({key}): {medians[f'rsfuse {key}'] / medians[f'transformers {key}']:.3f}")


if __name__ == "__main__":
    main()
