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
  quant       per scheme (full, int8, nf4, int4; `paper_scale.quant`): the model's weight GB, the peak memory of a
              batch-1 greedy answer above them and its time, token agreement with full precision; a scheme the
              device cannot run is recorded with the reason; capped at 90 s of the run.

Sections "batch", "tower" and "quant" are skipped (and listed under "skipped") when ``--budget-s`` minus their
reserve (150 s / 90 s / 90 s) has already been used, so that the whole call stays inside a device timeout. On a GPU the run logs
recompilations and inductor's performance hints (CUDA graphs skipped, and why) to stderr.

    python bench/gpu_paper_scale.py --out bench/results/h200_paper_scale       # one H100/H200 (~4-6 min)
    python bench/gpu_paper_scale.py --tiny --out /tmp/tiny                      # CPU, fp32, tiny sizes: same code

``--tiny`` runs every section at ``MFRSVLMConfig.tiny()`` sizes on the CPU in fp32 (``torch.compile`` without CUDA
graphs): a check of the script, not a measurement.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from rsfuse import MFRSVLMConfig
from rsfuse.options import ATTENTION_BACKENDS
from paper_scale.common import DTYPES, Recorder, SECTIONS, git_commit, measure_references, synchronize
from paper_scale.models import build_hf_clip, build_llava_hf, llava_shaped, random_mfrsvlm
from paper_scale.quant import section_quantization
from paper_scale.report import collect_figures, goal_rows, table
from paper_scale.sections import (
    section_answers, section_checks, section_decode_floor, section_detail, section_serve, section_tower,
)



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
    parser.add_argument("--attention-backend", default="sdpa", choices=ATTENTION_BACKENDS,
                        help="rsfuse attention backend (the baselines use SDPA)")
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
    if "serve" in args.sections and budget_left("serve", reserve=60):
        section_serve(rec, model, args, device, clients=args.batch)
    if "quant" in args.sections and budget_left("quant", reserve=90):
        section_quantization(rec, model, args, device)

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
