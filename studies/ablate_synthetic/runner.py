"""Ablation study of MF-RSVLM's design choices on the synthetic remote-sensing benchmark (CPU-sized).

Every variant is trained from scratch with the same budget (same steps, batch, data, tokenizer and seeds) by the
training recipe (``rsfuse train``), then evaluated on the synthetic test split by the evaluation recipe
(``rsfuse eval task=synthetic``, greedy, normalised exact match). Results per run go to
``OUT/runs/<variant>/seed<k>/eval/metrics.json``; runs whose results exist are skipped (resumable), a run whose
``final/`` exists is only evaluated. The report (``--report``, default ``docs/ablations/ABLATIONS.md``) holds mean ± std over seeds
per question type, the small-object mean, the paired comparisons against the paper's ablation directions, the exact
command, the machine and the budget; it is rewritten after every finished run, so an interrupted study still leaves
a report of what ran.

Variants (``--variants`` takes a comma list of these names; ``all`` = every one):

- ``global_only``: ``model.detail=false`` (LLaVA-1.5 style: global tokens only, no canvas, no injection);
- ``mf_rsvlm``: the full model (detail layers {1/3, 2/3, last}, window scales {1.0, 0.5}, injection before two of
  the four decoder layers, spatial windows, the canvas from the image's real 224 pixels as in the embedded default,
  residual scale 1.0, sample-level router);
- ``layers_last``: detail layers {last} only;   ``scales_1``: window scale {1.0} only;
- ``inject_one`` / ``inject_four``: injection before decoder layer 2 only / before all four layers;
- ``layout_reference``: the released weights' channel-mixed window layout;
- ``canvas_upsampled``: the reference's canvas, the 112-px global view upsampled 2×, instead of the real pixels;
- ``residual_zero``: residual scale initialised to 0.0;   ``router_token``: per-token router.

Example (the study in docs/ablations/ABLATIONS.md)::

    python -m studies.ablate_synthetic --seeds 3 --steps 3000 --batch-size 8 --jobs 2 --max-new-tokens 12         --eval-limit 1500
    python -m studies.ablate_synthetic --report-only          # rewrite the report from the results on disk

``OUT/study.json`` keeps the command and start time of the study (the report names that command, also when
rewritten with ``--report-only``); ``OUT/notes.md``, when present, is added to the report under "Notes".

The model is the project's tiny MF-RSVLM with a frozen vision tower of width 64 and 3 blocks that every variant
shares: pretrained once on the benchmark's training images (``rsfuse.synthetic.tower_pretrain``, the stand-in for the
paper's frozen CLIP), its features cached per image so that a run costs about what the decoder costs; see
``variants.STUDY_OVERRIDES``.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .report import REPO, collect, compare, load_run, machine, write_report
from .variants import COMPARISONS, GOAL_PAIR, STUDY_OVERRIDES, VARIANTS, study_overrides

COMMAND = ["python", "-m", "studies.ablate_synthetic"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="all", help="comma list of variant names, or 'all'")
    parser.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma list of seeds")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", default="runs/ablate_synthetic", help="study folder (runs, data, tokenizer)")
    parser.add_argument("--data", default="", help="synthetic benchmark folder ('' = OUT/data), written if missing "
                                                    "and never rewritten (its flags must match the ones below)")
    parser.add_argument("--images", type=int, default=6000, help="images of the synthetic benchmark when written")
    parser.add_argument("--image-size", type=int, default=224, help="side of the synthetic images when written")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic benchmark when written")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="small objects' sides × this when the benchmark is written (rsfuse synth --object-scale)")
    parser.add_argument("--train-turns", choices=("question", "image"), default="question",
                        help="training samples: one per question (train.json as written) or one multi-turn "
                             "conversation per image holding all its questions in a per-image shuffled order "
                             "(OUT/shared/train_by_image.json); evaluation stays one question per sample")
    parser.add_argument("--vocab-size", type=int, default=512, help="sentencepiece vocabulary of the shared tokenizer")
    parser.add_argument("--eval-limit", type=int, default=0, help="test questions per evaluation (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="generation budget per answer")
    parser.add_argument("--max-seeds", type=int, default=0,
                        help="after the seeds of --seeds, add seeds (the next unused ones) to both variants of every "
                             "comparison still undecided (see report.compare), up to this many seeds per variant "
                             "(0 = never add)")
    parser.add_argument("--order", default="goal-first", choices=("goal-first", "seed-major"),
                        help="run order (see job_order)")
    parser.add_argument("--report", default="docs/ablations/ABLATIONS.md", help="markdown report to (re)write")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from existing results")
    parser.add_argument("--notes", default="", help="markdown file added to the report under 'Notes' (default: OUT/notes.md when it exists)")
    parser.add_argument("--extra", action="append", default=[], help="extra training key=value for every run")
    parser.add_argument("--tower", choices=("pretrained", "random"), default="pretrained",
                        help="the frozen tower every variant shares: pretrained once on the benchmark's training "
                             "images (rsfuse.synthetic.tower_pretrain; OUT/shared/tower) or randomly initialised")
    parser.add_argument("--tower-steps", type=int, default=3000, help="pretraining steps of the shared tower")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device of every run (and of the tower pretraining)")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    args.variant_names = names
    args.seed_list = (list(range(int(args.seeds))) if args.seeds.isdigit()
                      else [int(s) for s in args.seeds.split(",") if s.strip()])
    if not args.seed_list or args.steps < 1 or args.jobs < 1 or args.batch_size < 1:
        parser.error("--seeds, --steps, --jobs and --batch-size must be positive")
    if args.max_seeds < 0:
        parser.error("--max-seeds must be >= 0")
    # Seeds the report looks for: --seeds, then the ones --max-seeds may add.
    first_extra = max(args.seed_list) + 1
    args.all_seeds = args.seed_list + list(range(first_extra, first_extra + args.max_seeds - len(args.seed_list)))
    return args

# meta.json field of a written benchmark -> the flag that sets it.
WRITE_FLAGS = {"n_images": "--images", "size": "--image-size", "seed": "--data-seed", "object_scale": "--object-scale"}

def prepare_data(args, out: Path) -> Path:
    """The study's benchmark: ``--data`` (or OUT/data), written with the writing flags when missing. A benchmark
    already there is never rewritten: one written with other settings stops the study, naming the differences."""
    from rsfuse.synthetic import IDENTITY_DEFAULTS, generate

    data = Path(args.data) if args.data else out / "data"
    if (data / "meta.json").is_file():
        meta = json.loads((data / "meta.json").read_text())
        wanted = {"n_images": args.images, "size": args.image_size, "seed": args.data_seed,
                  "object_scale": args.object_scale}
        differing = [f"{flag} {wanted[key]} (written with {meta.get(key, IDENTITY_DEFAULTS.get(key))})"
                     for key, flag in WRITE_FLAGS.items() if meta.get(key, IDENTITY_DEFAULTS.get(key)) != wanted[key]]
        if differing:
            raise SystemExit(f"[ablate] {data} holds a benchmark written with other settings: {', '.join(differing)}; "
                             "the study never rewrites one: pass the flags it was written with, or another "
                             "--data / --out")
    else:
        print(f"[ablate] writing the synthetic benchmark ({args.images} images) to {data}", flush=True)
    generate(data, n_images=args.images, seed=args.data_seed, size=args.image_size, object_scale=args.object_scale,
             workers=os.cpu_count() or 1)
    return data

MERGED_MAX_LENGTH = 256  # text tokens of a merged conversation (the longest at 224 px: about 170)

def prepare_train_json(args, data: Path, out: Path) -> Path:
    """The training JSON of every run: DATA/train.json, or (``--train-turns image``) its questions merged into one
    multi-turn conversation per image, written once to OUT/shared/train_by_image.json."""
    if args.train_turns == "question":
        return data / "train.json"
    from rsfuse.data import merge_turns_by_image

    merged = out / "shared" / "train_by_image.json"
    if not merged.is_file():
        records = merge_turns_by_image(json.loads((data / "train.json").read_text()), shuffle_seed=args.data_seed)
        merged.parent.mkdir(parents=True, exist_ok=True)
        partial = merged.with_suffix(".json.partial")
        partial.write_text(json.dumps(records, indent=1))
        partial.replace(merged)
    return merged

def prepare_tokenizer(args, data: Path, out: Path) -> Path:
    """One tokenizer shared by every run, made exactly as the training recipe makes its own."""
    from rsfuse.recipes.train_args import load_config
    from rsfuse.train.setup import prepare_tokenizer as recipe_tokenizer
    from rsfuse.train.distributed import DistributedContext

    folder = out / "shared"
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(None, [f"data.json={data / 'train.json'}", f"data.vocab_size={args.vocab_size}"])
    recipe_tokenizer(config, DistributedContext(), folder)
    return folder / "tokenizer"

def prepare_tower(args, data: Path, out: Path) -> Path | None:
    """The shared frozen tower: pretrained once (``--tower pretrained``, kept in OUT/shared/tower) or None (random)."""
    if args.tower == "random":
        return None
    folder = out / "shared" / "tower"
    if (folder / "pretrain.json").is_file():
        return folder
    import torch

    from rsfuse.recipes.train_args import load_config
    from rsfuse.train.setup import build_model_config
    from rsfuse.synthetic import TowerPretrainSettings, pretrain_synthetic_tower

    model_keys = [item for item in STUDY_OVERRIDES + tuple(args.extra) if item.startswith("model.")]
    model_config = build_model_config(load_config(None, model_keys), None)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    print(f"[ablate] pretraining the shared tower ({args.tower_steps} steps, {device}) into {folder}", flush=True)
    # Crops as the model sees the image: whole (global view), half (scale-1.0 windows), quarter (scale-0.5 windows).
    side = json.loads((data / "meta.json").read_text())["size"]
    settings = TowerPretrainSettings(layers=tuple(sorted(set(model_config.detail_layers or ())
                                                         | {model_config.global_hidden_index})),
                                     steps=args.tower_steps, crop_sides=(side, side // 2, side // 4),
                                     seed=args.data_seed)
    pretrain_synthetic_tower(data, folder, config=model_config.vision, settings=settings, device=device,
                             log=lambda line: print(line, flush=True))
    return folder

def train_command(args, variant: str, seed: int, data: Path, tokenizer: Path, run_dir: Path,
                  tower: Path | None) -> list[str]:
    merged = args.train_turns == "image"
    return [
        sys.executable, "-m", "rsfuse.cli", "train",
        f"output_dir={run_dir}", f"seed={seed}", f"max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"data.json={args.train_json}", *([f"data.max_length={MERGED_MAX_LENGTH}"] if merged else []),
        f"data.image_root={data}", f"data.test_json={data / 'test.json'}",
        f"data.tokenizer={tokenizer}", "num_threads=1", "resume=auto", f"device={args.device}",
        *study_overrides(args, tower), *VARIANTS[variant].overrides,
    ]

def eval_command(args, data: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "rsfuse.cli", "eval", "task=synthetic", f"model={run_dir / 'final'}",
        f"data={data / 'test.json'}", f"image_root={data}", f"output_dir={run_dir / 'eval'}", "batch_size=32",
        f"max_new_tokens={args.max_new_tokens}", f"limit={args.eval_limit}", "num_threads=1", "progress=false",
        f"device={args.device}",
    ]

def run_one(args, variant: str, seed: int, data: Path, tokenizer: Path, out: Path, tower: Path | None) -> dict | None:
    run_dir = out / "runs" / variant / f"seed{seed}"
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        return load_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RSFUSE_TYPECHECK", None)
    started = time.time()
    with (run_dir / "run.log").open("a") as log:
        steps = []
        if not (run_dir / "final" / "config.json").is_file():
            steps.append(("train", train_command(args, variant, seed, data, tokenizer, run_dir, tower)))
        steps.append(("eval", eval_command(args, data, run_dir)))
        for name, command in steps:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            if result.returncode != 0:
                print(f"[ablate] {variant} seed {seed}: {name} failed (exit {result.returncode}); see "
                      f"{run_dir / 'run.log'}", flush=True)
                return None
    (run_dir / "wall_seconds.json").write_text(json.dumps({"wall_s": time.time() - started,
                                                            "machine": machine(args.device)}))
    return load_run(run_dir)

def job_order(names: list[str], seeds: list[int], order: str) -> list[tuple[str, int]]:
    """``seed-major``: every variant's first seed before any second seed. ``goal-first``: every seed of the goal
    pair (global-only baseline, full MF-RSVLM) first, then the other variants seed-major, so a study cut short by
    the clock still answers the main question with all seeds."""
    seed_major = [(name, seed) for seed in seeds for name in names]
    if order == "seed-major":
        return seed_major
    goal = [(name, seed) for seed in seeds for name in names if name in GOAL_PAIR]
    return goal + [job for job in seed_major if job[0] not in GOAL_PAIR]

def undecided_jobs(args, out: Path) -> list[tuple[str, int]]:
    """One more seed (the next of ``args.all_seeds`` it lacks) for both variants of every comparison whose verdict is
    still *undecided*, while a side has fewer than ``--max-seeds`` seeds; [] when every direction is decided."""
    results = collect(out, args.variant_names, args.all_seeds)
    jobs: list[tuple[str, int]] = []
    for better, worse, _ in COMPARISONS:
        if better not in results or worse not in results:
            continue
        small = [[row["small-object"] for row in results[name].values()] for name in (better, worse)]
        if compare(*small)[2].startswith("undecided"):
            for name in (better, worse):
                missing = [seed for seed in args.all_seeds if seed not in results[name]]
                if missing and len(results[name]) < args.max_seeds and (name, missing[0]) not in jobs:
                    jobs.append((name, missing[0]))
    return jobs


class JobQueue:
    """Hands the study's jobs to parallel workers in order, except that a variant's later seeds wait while its first
    seed runs: that run encodes every training image and writes the shared feature store when it ends, so a second
    seed started beside it would encode them all again. When every pending job waits, the first one goes anyway."""

    def __init__(self, jobs: list[tuple[str, int]]) -> None:
        self.pending = list(jobs)
        self.running: list[tuple[str, int]] = []
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def take(self) -> tuple[str, int] | None:
        with self.lock:
            if not self.pending:
                return None
            encoding = {name for name, _ in self.running if name not in self.finished}
            job = next((job for job in self.pending if job[0] not in encoding), self.pending[0])
            self.pending.remove(job)
            self.running.append(job)
            return job

    def done(self, job: tuple[str, int]) -> None:
        with self.lock:
            self.running.remove(job)
            self.finished.add(job[0])


def code_commit() -> str:
    """The repository's commit (``+dirty`` with uncommitted changes under rsfuse/ or studies/)."""
    def git(*words):
        return subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "rsfuse", "studies") else "")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    command = shlex.join([*COMMAND, *argv])
    study_file = out / "study.json"
    if args.report_only:
        if not any((out / "runs").glob("*/seed*/eval/metrics.json")):
            # An empty report would overwrite a committed one with nothing.
            print(f"ablate_synthetic: no finished run under {out / 'runs'} (pass --out STUDY_FOLDER); "
                  f"{args.report} left as it is", file=sys.stderr)
            return 2
        # The report names the command that ran the study, not this report-only call.
        if study_file.is_file():
            study = json.loads(study_file.read_text())
            command = study["command"]
            # Budget, seeds and evaluation settings come from the command that ran the study, not from this call.
            words = shlex.split(command)  # python -m studies.ablate_synthetic ... (or the former python recipes/ablate_synthetic.py ...)
            start = 3 if words[1:2] == ["-m"] else 2
            stored = [arg for arg in words[start:] if arg != "--report-only"]
            wanted = ["--report", args.report, "--notes", args.notes, "--out", args.out]
            if args.variants != "all":
                wanted += ["--variants", args.variants]
            if args.max_seeds:
                wanted += ["--max-seeds", str(args.max_seeds)]
            args = parse_args(stored + wanted)
        print(write_report(args, out, command))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    study = json.loads(study_file.read_text()) if study_file.is_file() else {"started": time.time()}
    if study.get("command") not in (None, command):  # resumed with other flags (say, --max-seeds): the report names
        study["earlier_commands"] = [*study.get("earlier_commands", []), study["command"]]  # the latest command
    study["command"] = command
    commit = code_commit()
    if commit not in study.setdefault("commits", []):  # the code of every run: the clone's commit(s)
        study["commits"].append(commit)
    study_file.write_text(json.dumps(study))
    data = prepare_data(args, out)
    tokenizer = prepare_tokenizer(args, data, out)
    args.train_json = prepare_train_json(args, data, out)
    tower = prepare_tower(args, data, out)
    started = time.time()
    lock = threading.Lock()
    failures = []

    def work(job):
        name, seed = job
        row = run_one(args, name, seed, data, tokenizer, out, tower)
        with lock:
            if row is None:
                failures.append(job)
            else:
                print(f"[ablate] {name} seed {seed}: small-object {100 * row['small-object']:.1f}, "
                      f"overall {100 * row['overall']:.1f} ({(time.time() - started) / 60:.1f} min)", flush=True)
            write_report(args, out, command)

    jobs = job_order(args.variant_names, args.seed_list, args.order)
    while jobs and not failures:
        queue = JobQueue(jobs)

        def worker():
            while (job := queue.take()) is not None:
                try:
                    work(job)
                finally:
                    queue.done(job)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(worker) for _ in range(args.jobs)]:
                future.result()
        jobs = undecided_jobs(args, out) if args.max_seeds else []
        if jobs:
            print(f"[ablate] undecided directions: adding {jobs}", flush=True)
    print(write_report(args, out, command))
    if failures:
        print(f"[ablate] failed runs: {failures}", file=sys.stderr)
        return 1
    return 0
