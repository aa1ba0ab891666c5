"""Decode step of two rsfuse versions (and transformers' LLaVA) in one interleaved run.

Each system runs in its own worker process (an rsfuse checkout is a different ``rsfuse`` package, so two versions
cannot share a process): the checkout given with ``--base`` (e.g. a ``git worktree`` of the commit before a change),
this checkout, and transformers' ``LlavaForConditionalGeneration`` (built as ``bench/decode.py`` builds it: the
baseline LLaVA-1.5 users run, default ``DynamicCache``, greedy, eager). Every worker builds the same model
(``MFRSVLMConfig.tiny()``, seed 0) and inputs, warms up (compiles) first, then the driver asks the workers in turn, in
alternating order, for a 1-token and an N-token greedy answer (EOS disabled); decode step = (time for N − time for 1)
/ (N − 1), medians of ``--repeats``. Example (the issue 28 check)::

    git worktree add /tmp/rsfuse-before <commit before the change>
    python bench/decode_versions.py --base /tmp/rsfuse-before --threads 1 --repeats 15
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def worker(system: str, threads: int, new_tokens: int, prompt_tokens: int) -> None:
    """Build the system, warm it up, then answer ``n`` lines from stdin with the seconds an ``n``-token answer took."""
    import torch

    from rsfuse import MFRSVLM, MFRSVLMConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, config.input_size, config.input_size, generator=generator)
    text = torch.randint(3, config.llm.vocab_size, (1, prompt_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    if system == "llava-hf":
        sys.path.insert(0, str(HERE / "bench"))
        from decode import build_llava  # noqa: PLC0415

        llava = build_llava(config)
        ids = torch.cat([text[:, :1], torch.full((1, config.num_visual_tokens), config.llm.vocab_size), text[:, 1:]], 1)

        def run(n: int):
            return llava.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None)
    else:
        model = MFRSVLM(config).eval()
        ids = torch.cat([text[:, :1], torch.full((1, 1), config.image_token_index), text[:, 1:]], dim=1)

        def run(n: int):
            return model.generate(pixels, ids, max_new_tokens=n, eos_token_id=[], compile=True)

    with torch.inference_mode():
        run(1), run(new_tokens)
        print("ready", flush=True)
        for line in sys.stdin:
            start = time.perf_counter()
            run(int(line))
            print(time.perf_counter() - start, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the other rsfuse checkout (e.g. the commit before a change)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.threads, args.new_tokens, args.prompt_tokens)
    base = Path(args.base).resolve()
    if not (base / "rsfuse" / "__init__.py").is_file():
        parser.error(f"--base {base}: not an rsfuse checkout (no rsfuse/__init__.py)")
    systems = {"base": (base, "rsfuse"), "this": (HERE, "rsfuse"), "llava-hf": (HERE, "llava-hf")}
    workers = {}
    for name, (tree, system) in systems.items():
        command = [sys.executable, str(Path(__file__).resolve()), "--base", str(base), "--worker", system,
                   "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
                   "--prompt-tokens", str(args.prompt_tokens)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        workers[name] = subprocess.Popen(command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
        if workers[name].stdout.readline().strip() != "ready":
            sys.exit(f"decode_versions: the {name} worker ({tree}) failed to start")
    times = {(name, n): [] for name in systems for n in (1, args.new_tokens)}
    for repeat in range(args.repeats):
        order = list(workers) if repeat % 2 == 0 else list(reversed(workers))
        for name in order:
            for n in (1, args.new_tokens):
                workers[name].stdin.write(f"{n}\n")
                workers[name].stdin.flush()
                times[(name, n)].append(float(workers[name].stdout.readline()))
    for process in workers.values():
        process.stdin.close()
        process.wait()
    n = args.new_tokens
    median = {key: statistics.median(values) for key, values in times.items()}
    step = {name: (median[(name, n)] - median[(name, 1)]) / (n - 1) for name in systems}
    result = {
        "threads": args.threads, "repeats": args.repeats, "new_tokens": n, "base": str(base),
        "decode_step_ms": {name: round(value * 1e3, 4) for name, value in step.items()},
        "this_over_base": round(step["this"] / step["base"], 4),
        "this_over_llava_hf": round(step["this"] / step["llava-hf"], 4),
        "base_over_llava_hf": round(step["base"] / step["llava-hf"], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
