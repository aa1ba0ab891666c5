"""MF-RSVLM through rsfuse's vLLM plugin vs vLLM's own LLaVA-1.5, offline throughput on one GPU machine.

Needs a GPU machine with vLLM and rsfuse installed (``pip install -e ".[vllm]"``) and two local folders: an MF-RSVLM
folder (rsfuse or released layout, e.g. ``rsfuse convert`` of the authors' 7B) and a llava-hf LLaVA-1.5 folder (e.g.
``llava-hf/llava-1.5-7b-hf``). The machines lent to this project reach no package registry and have no vLLM, so this
script has not been run there (BENCHMARKS.md says so).

Each engine runs in its own process (one engine per process, the GPU memory freed in between): the same
``--requests`` image questions (``--size``-px random PNGs, one per request), greedy, ``--max-tokens`` new tokens
(``ignore_eos``, so both produce the same number of tokens), after ``--warmup`` requests. Reported: requests/s, output
tokens/s, and the ratio MF-RSVLM / LLaVA-1.5. MF-RSVLM costs more per image by design (1 + 58 tower passes instead of
1, 4 injections); the ratio says how much of that vLLM's batching hides.

    python bench/vllm_gpu.py --mfrsvlm mfrsvlm-7b_sft --llava llava-1.5-7b-hf --out bench/results/vllm_gpu.json
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run_engine(model: str, kind: str, requests: int, warmup: int, max_tokens: int, size: int) -> dict:
    import numpy as np
    from PIL import Image
    from vllm import LLM, SamplingParams

    extra = {"tokenizer_mode": "rsfuse"} if kind == "mfrsvlm" else {}
    llm = LLM(model=model, dtype="bfloat16", max_model_len=4096, limit_mm_per_prompt={"image": 1}, **extra)
    rng = np.random.default_rng(0)
    question = "USER: <image>\nHow many ships are in the harbour? ASSISTANT:"
    if kind == "mfrsvlm":  # the folder's own template, as rsfuse's processor builds it
        question = "<image>\nHow many ships are in the harbour?"
    prompts = [{"prompt": question, "multi_modal_data": {"image": Image.fromarray(
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8))}} for _ in range(requests + warmup)]
    if kind == "mfrsvlm":
        tokenizer = llm.get_tokenizer()
        for prompt in prompts:
            prompt["prompt_token_ids"] = tokenizer.render([{"role": "user", "content": prompt.pop("prompt")}])
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts[:warmup], params)
    started = time.perf_counter()
    outputs = llm.generate(prompts[warmup:], params)
    wall = time.perf_counter() - started
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    return {"engine": kind, "model": model, "requests": requests, "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 3), "output_tokens_per_s": round(tokens / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfrsvlm", required=True)
    parser.add_argument("--llava", required=True)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--size", type=int, default=672)
    parser.add_argument("--one", choices=["mfrsvlm", "llava"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.one:
        model = args.mfrsvlm if args.one == "mfrsvlm" else args.llava
        print(json.dumps(run_engine(model, args.one, args.requests, args.warmup, args.max_tokens, args.size)))
        return 0
    results = []
    for kind in ("llava", "mfrsvlm"):
        command = [sys.executable, __file__, "--mfrsvlm", args.mfrsvlm, "--llava", args.llava, "--one", kind,
                   "--requests", str(args.requests), "--warmup", str(args.warmup), "--max-tokens",
                   str(args.max_tokens), "--size", str(args.size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    llava, ours = results
    summary = {"results": results, "mfrsvlm_over_llava_requests": round(ours["requests_per_s"] / llava["requests_per_s"], 3)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
