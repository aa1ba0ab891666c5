"""Answer time and decode step: rsfuse ``MFRSVLM.generate`` vs transformers' ``LlavaForConditionalGeneration``.

The baseline is what LLaVA-1.5 users run: transformers' ``LlavaForConditionalGeneration.generate`` with its default
cache (``DynamicCache``), greedy, eager, on ``input_ids`` holding the image token once per visual token (what the
llava-hf processor produces). It gets the same decoder and tower shapes as rsfuse's model (``MFRSVLMConfig.tiny()``
by default), built in the same process. rsfuse runs MF-RSVLM (the detail branch on: tower passes over every window,
injection at prefill) and, for the like-for-like answer, the global-only model (``detail=False``), each eager and
with ``compile=True`` (compile time excluded by a warm-up call).

Timing: per system, the median of ``--repeats`` calls of a 1-token and a ``--new-tokens``-token greedy answer
(EOS disabled so every answer has that length), calls interleaved across systems; decode step =
(time for N tokens − time for 1) / (N − 1). One torch thread by default. Example:

    python bench/decode.py --threads 1 --repeats 15
"""

import argparse
import platform
import statistics
import time

import torch
import transformers

from rsfuse import MFRSVLM, MFRSVLMConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens of the prompt (plus the image)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    parser.add_argument("--systems", default="llava-hf,rsfuse,rsfuse-compile,rsfuse-global,rsfuse-global-compile")
    parser.add_argument("--agreement", action="store_true",
                        help="instead: greedy-token agreement of compile=True vs eager in bf16 (8 prompts, 32 tokens)")
    return parser.parse_args()


def bf16_agreement() -> None:
    """Compiled vs eager greedy tokens of the tiny MF-RSVLM in bf16 (fp32 gives identical tokens: a test)."""
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny()
    model = MFRSVLM(config).eval().to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(8, 3, config.input_size, config.input_size, generator=generator).to(torch.bfloat16)
    ids = torch.randint(3, config.llm.vocab_size, (8, 24), generator=generator)
    ids[:, 0], ids[:, 1] = config.llm.bos_token_id, config.image_token_index
    with torch.inference_mode():
        eager = model.generate(pixels, ids, max_new_tokens=32, eos_token_id=[])
        compiled = model.generate(pixels, ids, max_new_tokens=32, eos_token_id=[], compile=True)
    same = eager == compiled
    first = [int((~row).int().argmax()) if not bool(row.all()) else row.numel() for row in same]
    print(f"bf16, 8 prompts x 32 greedy tokens: {same.float().mean().item():.4f} of tokens agree; "
          f"first divergence per row {first}")


def build_llava(config: MFRSVLMConfig) -> transformers.LlavaForConditionalGeneration:
    """transformers' LLaVA with the tower and decoder shapes of ``config`` (the image token appended to the vocab)."""
    vision, llm = config.vision, config.llm
    vision_config = transformers.CLIPVisionConfig(
        image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads, hidden_act=vision.hidden_act,
        layer_norm_eps=vision.layer_norm_eps, projection_dim=vision.hidden_size,
    )
    text_config = transformers.LlamaConfig(
        vocab_size=llm.vocab_size + 1, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, head_dim=llm.head_dim, rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta, max_position_embeddings=llm.max_position_embeddings,
        bos_token_id=llm.bos_token_id, eos_token_id=llm.eos_token_id, pad_token_id=llm.pad_token_id,
    )
    llava_config = transformers.LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=llm.vocab_size,
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    llava_config._attn_implementation = "sdpa"
    return transformers.LlavaForConditionalGeneration(llava_config).eval()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.agreement:
        return bf16_agreement()
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny()
    size, tokens = config.input_size, config.num_visual_tokens
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.batch, 3, size, size, generator=generator)
    text = torch.randint(3, config.llm.vocab_size, (args.batch, args.prompt_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    ours_ids = torch.cat([text[:, :1], torch.full((args.batch, 1), config.image_token_index), text[:, 1:]], dim=1)
    llava = build_llava(config)
    hf_ids = torch.cat([text[:, :1], torch.full((args.batch, tokens), config.llm.vocab_size), text[:, 1:]], dim=1)
    detail = MFRSVLM(config).eval()
    global_only = MFRSVLM(MFRSVLMConfig.tiny(detail=False, global_layer=-1, image_placement="token")).eval()

    def ours(model, compile_):
        return lambda n: model.generate(pixels, ours_ids, max_new_tokens=n, eos_token_id=[], compile=compile_)

    def theirs(n):
        return llava.generate(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids),
                              max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None
                              )[:, hf_ids.shape[1]:]

    systems = {
        "llava-hf": theirs,
        "rsfuse": ours(detail, False),
        "rsfuse-compile": ours(detail, True),
        "rsfuse-global": ours(global_only, False),
        "rsfuse-global-compile": ours(global_only, True),
    }
    systems = {name: systems[name] for name in args.systems.split(",")}
    with torch.inference_mode():
        for name, run in systems.items():  # warm-up (and compilation) outside the timings
            start = time.perf_counter()
            lengths = {run(1).shape[1], run(args.new_tokens).shape[1]}
            assert lengths <= {1, args.new_tokens}, (name, lengths)
            print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
        times = {(name, n): [] for name in systems for n in (1, args.new_tokens)}
        for repeat in range(args.repeats):
            order = list(systems.items()) if repeat % 2 == 0 else list(reversed(systems.items()))
            for name, run in order:
                for n in (1, args.new_tokens):
                    start = time.perf_counter()
                    run(n)
                    times[(name, n)].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    n = args.new_tokens
    print(f"torch {torch.__version__} | transformers {transformers.__version__} | threads {torch.get_num_threads()} | "
          f"{platform.processor() or platform.machine()} | batch {args.batch} | prompt {args.prompt_tokens} text "
          f"tokens + {tokens} visual | {n} new tokens | median of {args.repeats}")
    print(f"| system | 1-token answer | {n}-token answer | decode step | step / llava-hf | answer / llava-hf |")
    print("| --- | --- | --- | --- | --- | --- |")
    base_step = (median[("llava-hf", n)] - median[("llava-hf", 1)]) / (n - 1) if "llava-hf" in systems else None
    for name in systems:
        step = (median[(name, n)] - median[(name, 1)]) / (n - 1)
        ratio = f"{step / base_step:.3f}" if base_step else "-"
        answer = f"{median[(name, n)] / median[('llava-hf', n)]:.3f}" if base_step else "-"
        print(f"| {name} | {median[(name, 1)] * 1e3:.1f} ms | {median[(name, n)] * 1e3:.1f} ms | "
              f"{step * 1e3:.2f} ms | {ratio} | {answer} |")


if __name__ == "__main__":
    main()
