"""Ablation study of MF-RSVLM's design choices on the synthetic remote-sensing benchmark (CPU-sized).

Every variant is trained from scratch with the same budget (same steps, batch, data, tokenizer and seeds) by the
training recipe (``rsfuse train``), then evaluated on the synthetic test split by the evaluation recipe
(``rsfuse eval task=synthetic``, greedy, normalised exact match). Results per run go to
``OUT/runs/<variant>/seed<k>/eval/metrics.json``; runs whose results exist are skipped (resumable), a run whose
``final/`` exists is only evaluated. The report (``--report``, default ``ABLATIONS.md``) holds mean ± std over seeds
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

Example (the study in ABLATIONS.md)::

    python recipes/ablate_synthetic.py --seeds 3 --steps 3000 --batch-size 8 --jobs 2 --max-new-tokens 12 \
        --eval-limit 1500
    python recipes/ablate_synthetic.py --report-only          # rewrite ABLATIONS.md from the results on disk

``OUT/study.json`` keeps the command and start time of the study (the report names that command, also when
rewritten with ``--report-only``); ``OUT/notes.md``, when present, is added to the report under "Notes".

The model is the project's tiny MF-RSVLM with a frozen vision tower of width 64 and 3 blocks that every variant
shares: pretrained once on the benchmark's training images (``rsfuse.train.tower_pretrain``, the stand-in for the
paper's frozen CLIP), its features cached per image so that a run costs about what the decoder costs; see
``STUDY_OVERRIDES``.
"""

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL_OBJECT_TYPES = ("count", "existence", "colour", "position")
OTHER_TYPES = ("scene", "caption")


@dataclass(frozen=True)
class Variant:
    description: str
    overrides: tuple[str, ...]


VARIANTS: dict[str, Variant] = {
    "global_only": Variant("global tokens only (model.detail=false), LLaVA-1.5 style", ("model.detail=false",)),
    "mf_rsvlm": Variant("full MF-RSVLM: layers {1/3, 2/3, last}, scales {1.0, 0.5}, injection at 2 of 4 layers", ()),
    "layers_last": Variant("detail layers {last} only", ("model.detail_layers=[3]",)),
    "scales_1": Variant("window scales {1.0} only", ("model.window_scales=[1.0]",)),
    "inject_one": Variant("injection before 1 decoder layer ([2])", ("model.injection_layers=[2]",)),
    "inject_four": Variant("injection before all 4 decoder layers ([1,2,3,4])", ("model.injection_layers=[1,2,3,4]",)),
    "layout_reference": Variant("window_layout=reference (channel-mixed windows)", ("model.window_layout=reference",)),
    "canvas_upsampled": Variant("canvas_source=upsampled (the reference: global view upsampled 2x)",
                                ("model.canvas_source=upsampled",)),
    "residual_zero": Variant("residual_scale_init=0.0", ("model.residual_scale_init=0.0",)),
    "router_token": Variant("router_mode=token (per-token routing)", ("model.router_mode=token",)),
}

# (variant expected to be better, variant expected to be worse, what the paper / the design says)
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("mf_rsvlm", "global_only", "paper: detail fusion + injection beats the global-only LLaVA-1.5 pipeline, "
                                "most on small objects"),
    ("mf_rsvlm", "layers_last", "paper ablation: fusing ViT layers 8/16/24 beats reduced-layer variants"),
    ("mf_rsvlm", "scales_1", "paper ablation: 336 + 168 windows beat a single window size"),
    ("inject_four", "inject_one", "paper ablation: injecting at more layers (2/4/6/8) beats fewer injection layers"),
    ("mf_rsvlm", "inject_one", "paper ablation (same direction, default 2 layers vs 1)"),
    ("mf_rsvlm", "layout_reference", "not in the paper: true windows expected to beat the reference's channel-mixed "
                                     "windows when training from scratch"),
    ("mf_rsvlm", "canvas_upsampled", "not in the paper: real 2x pixels expected to beat the upsampled canvas"),
    ("mf_rsvlm", "residual_zero", "not in the paper: the reference initialises the residual scale to 1.0"),
    ("mf_rsvlm", "router_token", "not in the paper: the reference routes per sample"),
)

# The shared budget and model of every run (training recipe keys; the variant's overrides come last).
STUDY_OVERRIDES: tuple[str, ...] = (
    "model.preset=tiny",
    "model.vision.hidden_size=64",
    "model.vision.intermediate_size=256",
    "model.vision.num_hidden_layers=3",
    "model.vision.num_attention_heads=4",
    "model.global_layer=3",
    "model.detail_layers=[1,2,3]",
    "model.canvas_source=image",
    "train.trainable.vit=frozen",
    "train.cache_vision_features=true",
    "train.lr=2e-3",
    "train.warmup_ratio=0.05",
    "save_every=0",
    "train.val_every=0",
    "data.val_json=",
    "eval.after_train=false",
    "train.log_every=10",
)


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
    parser.add_argument("--order", default="goal-first", choices=("goal-first", "seed-major"),
                        help="run order (see job_order)")
    parser.add_argument("--report", default="ABLATIONS.md", help="markdown report to (re)write")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from existing results")
    parser.add_argument("--notes", default="", help="markdown file added to the report under 'Notes' (default: OUT/notes.md when it exists)")
    parser.add_argument("--extra", action="append", default=[], help="extra training key=value for every run")
    parser.add_argument("--tower", choices=("pretrained", "random"), default="pretrained",
                        help="the frozen tower every variant shares: pretrained once on the benchmark's training "
                             "images (rsfuse.train.tower_pretrain; OUT/shared/tower) or randomly initialised")
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
    return args


# ---------------------------------------------------------------------------------------------------- preparation


# meta.json field of a written benchmark -> the flag that sets it.
WRITE_FLAGS = {"n_images": "--images", "size": "--image-size", "seed": "--data-seed", "object_scale": "--object-scale"}


def prepare_data(args, out: Path) -> Path:
    """The study's benchmark: ``--data`` (or OUT/data), written with the writing flags when missing. A benchmark
    already there is never rewritten: one written with other settings stops the study, naming the differences."""
    from rsfuse.data.synthetic import IDENTITY_DEFAULTS, generate

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
    from rsfuse.data.instructions import merge_turns_by_image

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
    from rsfuse.recipes.config import load_config
    from rsfuse.recipes.train import prepare_tokenizer as recipe_tokenizer
    from rsfuse.train.distributed import DistributedContext

    folder = out / "shared"
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(None, [f"data.json={data / 'train.json'}", f"data.vocab_size={args.vocab_size}"])
    recipe_tokenizer(config, DistributedContext(), folder)
    return folder / "tokenizer"


def study_overrides(args, tower: Path | None) -> list[str]:
    """Training keys shared by every run: STUDY_OVERRIDES, the shared tower, then ``--extra``."""
    shared = [f"model.vision_weights={tower}", f"train.feature_cache_dir={tower.parent / 'features'}"] if tower else []
    return [*STUDY_OVERRIDES, *shared, *args.extra]


def prepare_tower(args, data: Path, out: Path) -> Path | None:
    """The shared frozen tower: pretrained once (``--tower pretrained``, kept in OUT/shared/tower) or None (random)."""
    if args.tower == "random":
        return None
    folder = out / "shared" / "tower"
    if (folder / "pretrain.json").is_file():
        return folder
    import torch

    from rsfuse.recipes.config import load_config
    from rsfuse.recipes.train import build_model_config
    from rsfuse.train.tower_pretrain import TowerPretrainSettings, pretrain_synthetic_tower

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


# ---------------------------------------------------------------------------------------------------- results


def load_run(run_dir: Path) -> dict | None:
    metrics_path = run_dir / "eval" / "metrics.json"
    if not metrics_path.is_file():
        return None
    result = json.loads(metrics_path.read_text())["result"]
    row = {kind: values["exact_accuracy"] for kind, values in result["per_type"].items()}
    row["small-object"] = result["by_object_size"].get("small", {}).get("exact_accuracy")
    row["overall"] = result["avg"]["exact_accuracy"]
    row["protocol"] = result["protocol"]
    row["samples"] = result["total"]
    wall = run_dir / "wall_seconds.json"
    timing = json.loads(wall.read_text()) if wall.is_file() else {}
    row["wall_s"] = timing.get("wall_s")
    row["machine"] = timing.get("machine")
    summary = run_dir / "summary.json"
    if summary.is_file():
        row["final_loss"] = json.loads(summary.read_text()).get("final_loss")
    return row


DETAIL_KIND = "vehicle"  # the kind its scene does not give away (ships: water, planes: airport, tanks: yards)


def kind_accuracies(run_dir: Path, test_records: dict[str, dict], kind: str) -> dict[str, float]:
    """Exact-match accuracy per small-object question type over a run's evaluated questions about ``kind``."""
    from rsfuse.eval import exact_match

    predictions = run_dir / "eval" / "predictions.jsonl"
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for line in predictions.read_text().splitlines() if predictions.is_file() else []:
        prediction = json.loads(line)
        record = test_records.get(prediction["id"])
        if record and record.get("small_object") and record.get("kind") == kind:
            question_type = record["question_type"]
            total[question_type] = total.get(question_type, 0) + 1
            correct[question_type] = correct.get(question_type, 0) + exact_match(prediction["prediction"],
                                                                                 record["answer"])
    return {question_type: correct[question_type] / total[question_type] for question_type in total}


def collect(out: Path, names, seeds) -> dict[str, dict[int, dict]]:
    results: dict[str, dict[int, dict]] = {}
    for name in names:
        for seed in seeds:
            row = load_run(out / "runs" / name / f"seed{seed}")
            if row is not None:
                results.setdefault(name, {})[seed] = row
    return results


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def verdict(better: list[float], worse: list[float]) -> tuple[float, str]:
    """Difference of means (points) and whether the expected direction holds beyond seed noise: it holds (or is
    reversed) when the difference exceeds twice its standard error over seeds, else it is not resolved."""
    mean_b, std_b = mean_std([100 * v for v in better])
    mean_w, std_w = mean_std([100 * v for v in worse])
    delta = mean_b - mean_w
    if std_b is None or std_w is None:
        return delta, ("holds (1 seed, no noise estimate)" if delta > 0 else
                       "does not hold (1 seed, no noise estimate)")
    noise = math.sqrt(std_b**2 / len(better) + std_w**2 / len(worse))
    if delta > 2 * noise:
        return delta, f"holds (Δ > 2 standard errors, SE {noise:.1f})"
    if delta < -2 * noise:
        return delta, f"does not hold: reversed (Δ < −2 standard errors, SE {noise:.1f})"
    return delta, f"not resolved: within 2 standard errors of seed noise (SE {noise:.1f})"


def _tower_summary(out: Path) -> str:
    report = out / "shared" / "tower" / "pretrain.json"
    if not report.is_file():
        return "no pretraining report found"
    f1 = json.loads(report.read_text())["validation_patch_f1"]
    parts = []
    for crop, label in (("crop224", "whole image (global view)"), ("crop56", "56-px window (scale 0.5)")):
        if crop in f1:
            deepest = f1[crop][max(f1[crop], key=lambda name: int(name.removeprefix("layer")))]
            parts.append(f"{label} kind F1 {deepest['kind_f1']:.2f}, colour F1 {deepest['colour_f1']:.2f}")
    return "held-out patch labels, last layer: " + "; ".join(parts)


def machine(device: str = "auto") -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    accelerator = ""
    if device != "cpu" and torch.cuda.is_available():
        accelerator = f"{torch.cuda.get_device_name(0)} GPU shared by the runs, "
    return (f"{accelerator}{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}; one CPU thread per run")


def _data_summary(data: Path) -> str:
    """One line on the benchmark the study used, from its meta.json."""
    try:
        meta = json.loads((data / "meta.json").read_text())
    except (OSError, ValueError):
        return f"`{data}` (no readable meta.json)"
    sizes = meta.get("object_sizes_drawn") or meta.get("object_sizes_at_224", {})
    drawn = ", ".join(f"{kind} {'×'.join(str(side) for side in sides)}" for kind, sides in sizes.items())
    counts = meta.get("counts", {}).get("samples", {})
    return (f"synthetic benchmark generator v{meta.get('version')}, {meta.get('n_images')} images of "
            f"{meta.get('size')} px (seed {meta.get('seed')}), object scale {meta.get('object_scale', 1.0):g} "
            f"(objects drawn {drawn} px); train/val/test samples {counts.get('train')}/{counts.get('val')}/"
            f"{counts.get('test')}")


def write_report(args, out: Path, command: str, elapsed: float | None) -> str:
    results = collect(out, args.variant_names, args.seed_list)
    types = list(SMALL_OBJECT_TYPES) + list(OTHER_TYPES)
    expected = len(args.variant_names) * len(args.seed_list)
    done = sum(len(seeds) for seeds in results.values())
    lines = [
        "# Ablations on the synthetic benchmark",
        "",
        "Generated by `recipes/ablate_synthetic.py` (do not edit by hand; rerun with `--report-only` to refresh).",
        "",
        f"- **Command**: `{command}`",
        f"- **Machine**: {machine(args.device)}.",
        f"- **Data**: {_data_summary(Path(args.data) if args.data else out / 'data')}.",
        f"- **Budget per run** (identical for every variant): {args.steps} optimizer steps × batch {args.batch_size} "
        f"= {args.steps * args.batch_size} training samples ("
        + ("one multi-turn conversation per image holding all its questions, shuffled per image"
           if args.train_turns == "image" else "one question each")
        + f"), same data order per seed, seeds {args.seed_list}; "
        f"{args.jobs} runs in parallel." + (f" Study wall time: {elapsed / 60:.1f} min." if elapsed else ""),
        "- **Model**: the tiny MF-RSVLM (4-layer decoder, 112-px global view, 224-px canvas built from the image's "
        "real pixels) with a vision tower of width 64, 3 blocks, patch 14 (8×8 tokens; detail layers {1, 2, 3} = "
        "{1/3, 2/3, last}), **frozen** as the paper freezes CLIP: "
        + ("pretrained once on the benchmark's training images with per-patch object kind/colour labels "
           "(`rsfuse.train.tower_pretrain`, " + f"{args.tower_steps} steps; " + _tower_summary(out)
           + ") and shared by every variant" if args.tower == "pretrained" else "randomly initialised")
        + ". Its features are cached per image and shared by the runs whose canvas settings match "
        "(`train.cache_vision_features`, `train.feature_cache_dir`; exact: a cached encoding equals a fresh one). Training keys shared by every run: `"
        + " ".join(study_overrides(args, out / "shared" / "tower" if args.tower == "pretrained" else None)) + "`.",
        f"- **Evaluation**: `rsfuse eval task=synthetic`, greedy, KV cache, max {args.max_new_tokens} new tokens, "
        + (f"first {args.eval_limit} test questions" if args.eval_limit else "the whole test split")
        + "; numbers are **normalised exact-match accuracy in %** (protocol: "
        + _protocol(results) + "), mean ± sample std over seeds. *small-object* = accuracy over all test questions "
        "flagged `small_object` (count, existence, colour, position); *overall* = mean over question types. "
        "Captions rarely match exactly: read that column as a sanity check only.",
        f"- **Completed runs**: {done} of {expected}.",
        "",
        "| variant | what changes | seeds | " + " | ".join(types) + " | small-object | overall |",
        "|---|---|---|" + "---|" * (len(types) + 2),
    ]
    for name in args.variant_names:
        rows = list(results.get(name, {}).values())
        cells = [cell([r[t] for r in rows if r.get(t) is not None]) for t in types]
        small = cell([r["small-object"] for r in rows if r.get("small-object") is not None])
        overall = cell([r["overall"] for r in rows if r.get("overall") is not None])
        lines.append(f"| `{name}` | {VARIANTS[name].description} | {len(rows)} | " + " | ".join(cells)
                     + f" | {small} | {overall} |")
    data = Path(args.data) if args.data else out / "data"
    test_records = ({record["id"]: record for record in json.loads((data / "test.json").read_text())}
                    if (data / "test.json").is_file() else {})
    lines += ["", f"Questions about the {DETAIL_KIND} only (the small-object kind its scene does not give away; "
              "same runs and protocol):", "",
              "| variant | " + " | ".join(SMALL_OBJECT_TYPES) + " |", "|---|" + "---|" * len(SMALL_OBJECT_TYPES)]
    for name in args.variant_names:
        per_seed = [kind_accuracies(out / "runs" / name / f"seed{seed}", test_records, DETAIL_KIND)
                    for seed in results.get(name, {})]
        lines.append(f"| `{name}` | " + " | ".join(cell([row[t] for row in per_seed if t in row])
                                                   for t in SMALL_OBJECT_TYPES) + " |")
    lines += ["", "## Does the paper's ablation direction hold at this scale?", "",
              "Δ = expected-better minus expected-worse, small-object accuracy in points (mean over seeds); a "
              "direction *holds* when Δ exceeds twice its standard error over seeds (SE = √(s₁²/n₁ + s₂²/n₂)).", "",
              "| expected better | expected worse | Δ small-object | Δ overall | claim | verdict |",
              "|---|---|---|---|---|---|"]
    findings = []
    for better, worse, claim in COMPARISONS:
        if better not in args.variant_names or worse not in args.variant_names:
            continue
        rows_b = list(results.get(better, {}).values())
        rows_w = list(results.get(worse, {}).values())
        if not rows_b or not rows_w:
            lines.append(f"| `{better}` | `{worse}` | – | – | {claim} | not run |")
            continue
        delta, word = verdict([r["small-object"] for r in rows_b], [r["small-object"] for r in rows_w])
        delta_all, _ = verdict([r["overall"] for r in rows_b], [r["overall"] for r in rows_w])
        lines.append(f"| `{better}` | `{worse}` | {delta:+.1f} | {delta_all:+.1f} | {claim} | {word} |")
        findings.append((better, worse, delta, word))
    if findings:
        lines += ["", "In plain words:", ""]
        for better, worse, delta, word in findings:
            lines.append(f"- `{better}` over `{worse}` ({delta:+.1f} points on small objects): {word}.")
    lines += ["", "## Goal check", ""]
    goal = next(((d, w) for b, wo, d, w in findings if (b, wo) == ("mf_rsvlm", "global_only")), None)
    if goal is None:
        lines.append("MF-RSVLM vs the global-only baseline: not measured (one of the two variants has no result).")
    else:
        delta, _ = goal
        n_b = len(results.get("mf_rsvlm", {}))
        n_w = len(results.get("global_only", {}))
        status = "MET" if delta >= 10 else "NOT MET"
        lines.append(f"Target: MF-RSVLM beats the global-only baseline by at least 10 points on the small-object "
                     f"questions (mean of 3 seeds). Measured: **{delta:+.1f} points** (means over {n_b} and {n_w} "
                     f"seeds) → **{status}**" + ("" if n_b >= 3 and n_w >= 3 else
                                                 " (fewer than 3 seeds: a reduced study)") + ".")
    missing = [f"{name}/seed{seed}" for name in args.variant_names for seed in args.seed_list
               if seed not in results.get(name, {})]
    if missing:
        lines += ["", "## Not run (or not finished)", "", "Runs without results: " + ", ".join(missing) + "."]
    machines = sorted({row["machine"] for seeds in results.values() for row in seeds.values() if row.get("machine")})
    if len(machines) > 1:
        lines += ["", "## Machines", "", "The runs did not all run on one machine (per-run column `machine` below); "
                  "compare variants across machines with care:", ""]
        lines += [f"- **M{index + 1}**: {name}" for index, name in enumerate(machines)]
    lines += ["", "## Per-run results", "",
              "| variant | seed | small-object | overall | final train loss | wall s | machine |",
              "|---|---|---|---|---|---|---|"]
    for name in args.variant_names:
        for seed, row in sorted(results.get(name, {}).items()):
            loss = row.get("final_loss")
            wall = row.get("wall_s")
            where = f"M{machines.index(row['machine']) + 1}" if row.get("machine") in machines else "–"
            lines.append(f"| `{name}` | {seed} | {100 * row['small-object']:.1f} | {100 * row['overall']:.1f} | "
                         f"{'–' if loss is None else f'{loss:.3f}'} | {'–' if wall is None else f'{wall:.0f}'} | "
                         f"{where} |")
    notes = Path(args.notes) if args.notes else out / "notes.md"
    if notes.is_file():
        lines += ["", "## Notes", "", notes.read_text().strip()]
    text = "\n".join(lines) + "\n"
    report = Path(args.report)
    if not report.is_absolute():
        report = REPO / report
    report.write_text(text)
    return text


def _protocol(results) -> str:
    for seeds in results.values():
        for row in seeds.values():
            return row["protocol"]
    return "synthetic exact match"


GOAL_PAIR = ("global_only", "mf_rsvlm")


def job_order(names: list[str], seeds: list[int], order: str) -> list[tuple[str, int]]:
    """``seed-major``: every variant's first seed before any second seed. ``goal-first``: every seed of the goal
    pair (global-only baseline, full MF-RSVLM) first, then the other variants seed-major, so a study cut short by
    the clock still answers the main question with all seeds."""
    seed_major = [(name, seed) for seed in seeds for name in names]
    if order == "seed-major":
        return seed_major
    goal = [(name, seed) for seed in seeds for name in names if name in GOAL_PAIR]
    return goal + [job for job in seed_major if job[0] not in GOAL_PAIR]


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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    command = shlex.join(["python", "recipes/ablate_synthetic.py", *argv])
    study_file = out / "study.json"
    if args.report_only:
        # The report names the command that ran the study, not this report-only call.
        elapsed = None
        if study_file.is_file():
            study = json.loads(study_file.read_text())
            command = study["command"]
            # Budget, seeds and evaluation settings come from the command that ran the study, not from this call.
            stored = [arg for arg in shlex.split(command)[2:] if arg != "--report-only"]
            wanted = ["--report", args.report, "--notes", args.notes, "--out", args.out]
            if args.variants != "all":
                wanted += ["--variants", args.variants]
            args = parse_args(stored + wanted)
            finished = [path.stat().st_mtime for path in (out / "runs").glob("*/seed*/eval/metrics.json")]
            elapsed = max(finished) - study["started"] if finished else None
        print(write_report(args, out, command, elapsed))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if not study_file.is_file():
        study_file.write_text(json.dumps({"command": command, "started": time.time()}))
    data = prepare_data(args, out)
    tokenizer = prepare_tokenizer(args, data, out)
    args.train_json = prepare_train_json(args, data, out)
    tower = prepare_tower(args, data, out)
    queue = JobQueue(job_order(args.variant_names, args.seed_list, args.order))
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
            write_report(args, out, command, time.time() - started)

    def worker():
        while (job := queue.take()) is not None:
            try:
                work(job)
            finally:
                queue.done(job)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(worker) for _ in range(args.jobs)]:
            future.result()
    print(write_report(args, out, command, time.time() - started))
    if failures:
        print(f"[ablate] failed runs: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
