"""The synthetic ablation's results and report: per-run results, mean ± std over seeds, the paired comparisons
against the paper's ablation directions, and the markdown report (default ``docs/ablations/ABLATIONS.md``)."""

import json
import math
import os
import platform
from pathlib import Path

from rsfuse.eval import exact_match
from rsfuse.synthetic import OTHER_QUESTIONS, SMALL_OBJECT_QUESTIONS

from .variants import COMPARISONS, VARIANTS, study_overrides

REPO = Path(__file__).resolve().parents[2]
SMALL_OBJECT_TYPES = SMALL_OBJECT_QUESTIONS
OTHER_TYPES = OTHER_QUESTIONS

__all__ = ["load_run", "kind_accuracies", "collect", "mean_std", "cell", "compare", "verdict", "machine", "write_report"]


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
    row["train_s"] = train_seconds(run_dir / "metrics.jsonl")
    summary = run_dir / "summary.json"
    if summary.is_file():
        row["final_loss"] = json.loads(summary.read_text()).get("final_loss")
    return row


def train_seconds(metrics: Path) -> float | None:
    """Training time summed over the logged steps of every session (a resumed run's wall time covers only its last
    part); None without the run's ``metrics.jsonl``."""
    if not metrics.is_file():
        return None
    with metrics.open() as lines:
        return sum(json.loads(line).get("step_s", 0.0) for line in lines if line.strip())

DETAIL_KIND = "vehicle"  # the kind its scene does not give away (ships: water, planes: airport, tanks: yards)

def kind_accuracies(run_dir: Path, test_records: dict[str, dict], kind: str) -> dict[str, float]:
    """Exact-match accuracy per small-object question type over a run's evaluated questions about ``kind``."""
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

NEGLIGIBLE_POINTS = 2.0  # a direction is negligible when the 95 % interval of Δ lies inside ± this many points


def compare(better: list[float], worse: list[float]) -> tuple[float, float | None, str]:
    """Δ = mean(better) − mean(worse) in points, its standard error over seeds (√(s₁²/n₁ + s₂²/n₂); None with one
    seed on a side) and the verdict: *holds* / *reversed* when |Δ| > 2 SE, *negligible* when the 95 % interval
    Δ ± 2 SE lies inside ±``NEGLIGIBLE_POINTS``, else *undecided* (more seeds needed)."""
    mean_b, std_b = mean_std([100 * v for v in better])
    mean_w, std_w = mean_std([100 * v for v in worse])
    delta = mean_b - mean_w
    if std_b is None or std_w is None:
        return delta, None, "undecided (1 seed on a side: no noise estimate)"
    se = math.sqrt(std_b**2 / len(better) + std_w**2 / len(worse))
    if delta > 2 * se:
        return delta, se, "holds"
    if delta < -2 * se:
        return delta, se, "reversed"
    if abs(delta) + 2 * se < NEGLIGIBLE_POINTS:
        return delta, se, "negligible"
    return delta, se, "undecided"


def verdict(better: list[float], worse: list[float], *, max_seeds: int = 0) -> tuple[float, str]:
    """``compare`` as (Δ, one phrase with the standard error); an undecided direction with ``max_seeds`` seeds on
    each side (the most the study runs) says so instead of asking for more."""
    delta, se, word = compare(better, worse)
    if se is None:
        return delta, word
    exhausted = max_seeds and min(len(better), len(worse)) >= max_seeds
    reason = {"holds": "Δ > 2 standard errors", "reversed": "Δ < −2 standard errors",
              "negligible": f"Δ ± 2 SE inside ±{NEGLIGIBLE_POINTS:g} points",
              "undecided": "within 2 standard errors, interval wider than "
                           f"±{NEGLIGIBLE_POINTS:g} points: "
                           + (f"still so after {max_seeds} seeds a side, the most this study runs" if exhausted
                              else "more seeds needed")}[word]
    return delta, f"{word} ({reason}, SE {se:.1f})"

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

def write_report(args, out: Path, command: str) -> str:
    results = collect(out, args.variant_names, getattr(args, "all_seeds", args.seed_list))
    types = list(SMALL_OBJECT_TYPES) + list(OTHER_TYPES)
    expected = len(args.variant_names) * len(args.seed_list)
    done = sum(len(seeds) for seeds in results.values())
    extra = sum(1 for seeds in results.values() for seed in seeds if seed not in args.seed_list)
    lines = [
        "# Ablations on the synthetic benchmark",
        "",
        "Generated by `python -m studies.ablate_synthetic` (do not edit by hand; rerun with `--report-only` to refresh).",
        "",
        f"- **Command**: `{command}`",
        f"- **Code**: {_commits(out)}.",
        f"- **Machine**: {machine(args.device)}.",
        f"- **Data**: {_data_summary(Path(args.data) if args.data else out / 'data')}.",
        f"- **Budget per run** (identical for every variant): {args.steps} optimizer steps × batch {args.batch_size} "
        f"= {args.steps * args.batch_size} training samples ("
        + ("one multi-turn conversation per image holding all its questions, shuffled per image"
           if args.train_turns == "image" else "one question each")
        + f"), same data order per seed, seeds {args.seed_list}; "
        f"{args.jobs} runs in parallel." + _time_spent(out, results),
        "- **Model**: the tiny MF-RSVLM (4-layer decoder, 112-px global view, 224-px canvas built from the image's "
        "real pixels) with a vision tower of width 64, 3 blocks, patch 14 (8×8 tokens; detail layers {1, 2, 3} = "
        "{1/3, 2/3, last}), **frozen** as the paper freezes CLIP: "
        + ("pretrained once on the benchmark's training images with per-patch object kind/colour labels "
           "(`rsfuse.synthetic.tower_pretrain`, " + f"{args.tower_steps} steps; " + _tower_summary(out)
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
        f"- **Completed runs**: {done - extra} of the {expected} planned ({len(args.variant_names)} variants × seeds "
        f"{args.seed_list})" + (f", and {extra} extra seed{'s' if extra != 1 else ''} of directions undecided after "
                                f"{len(args.seed_list)} (up to {args.max_seeds} seeds per variant)" if extra else "")
        + ".",
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
              "Δ = expected-better minus expected-worse, small-object accuracy in points (mean over seeds), SE its "
              "standard error over seeds (√(s₁²/n₁ + s₂²/n₂)), interval Δ ± 2 SE (95 %, normal approximation). "
              "A direction *holds* (or is *reversed*) when |Δ| > 2 SE; it is *negligible* when the interval lies "
              f"inside ±{NEGLIGIBLE_POINTS:g} points; otherwise it is *undecided*.", "",
              "| expected better | expected worse | Δ small-object | SE | 95 % interval | Δ overall | claim | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    findings = []
    for better, worse, claim in COMPARISONS:
        if better not in args.variant_names or worse not in args.variant_names:
            continue
        rows_b = list(results.get(better, {}).values())
        rows_w = list(results.get(worse, {}).values())
        if not rows_b or not rows_w:
            lines.append(f"| `{better}` | `{worse}` | – | – | – | – | {claim} | not run |")
            continue
        small_b, small_w = [r["small-object"] for r in rows_b], [r["small-object"] for r in rows_w]
        delta, se, _ = compare(small_b, small_w)
        _, word = verdict(small_b, small_w, max_seeds=getattr(args, "max_seeds", 0) or 0)
        delta_all, _, _ = compare([r["overall"] for r in rows_b], [r["overall"] for r in rows_w])
        spread = "–" if se is None else f"{se:.1f}"
        interval = "–" if se is None else f"[{delta - 2 * se:+.1f}, {delta + 2 * se:+.1f}]"
        lines.append(f"| `{better}` | `{worse}` | {delta:+.1f} | {spread} | {interval} | {delta_all:+.1f} | {claim} | "
                     f"{word.split(' (')[0]} |")
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
        status = ("MET" if delta >= 10 else "NOT MET") if n_b >= 3 and n_w >= 3 else "not judged yet"
        lines.append(f"Target: MF-RSVLM beats the global-only baseline by at least 10 points on the small-object "
                     f"questions (mean of 3 seeds). Measured: **{delta:+.1f} points** (means over {n_b} and {n_w} "
                     f"seeds) → **{status}**" + ("" if n_b >= 3 and n_w >= 3 else
                                                 " (fewer than 3 seeds on a side)") + ".")
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
              "*train s*: training time summed over the logged steps of every session; *wall s*: the runner call "
              "that finished the run, training and evaluation (a run resumed after an interruption counts only that "
              "last call).", "",
              "| variant | seed | small-object | overall | final train loss | train s | wall s | machine |",
              "|---|---|---|---|---|---|---|---|"]
    for name in args.variant_names:
        for seed, row in sorted(results.get(name, {}).items()):
            loss = row.get("final_loss")
            wall, train = row.get("wall_s"), row.get("train_s")
            where = f"M{machines.index(row['machine']) + 1}" if row.get("machine") in machines else "–"
            lines.append(f"| `{name}` | {seed} | {100 * row['small-object']:.1f} | {100 * row['overall']:.1f} | "
                         f"{'–' if loss is None else f'{loss:.3f}'} | {'–' if train is None else f'{train:.0f}'} | "
                         f"{'–' if wall is None else f'{wall:.0f}'} | "
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

def _time_spent(out: Path, results) -> str:
    """The runs' training time summed, and the study's span from its first start to its last finished run (pauses
    between sessions included, so the two differ)."""
    train = [row["train_s"] for seeds in results.values() for row in seeds.values() if row.get("train_s")]
    text = f" Training time summed over the runs: {sum(train) / 3600:.1f} h." if train else ""
    finished = [path.stat().st_mtime for path in (out / "runs").glob("*/seed*/eval/metrics.json")]
    try:
        started = float(json.loads((out / "study.json").read_text())["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return text
    if finished:
        text += (f" Study span, first start to last finished run (pauses included): "
                 f"{(max(finished) - started) / 3600:.1f} h.")
    return text


def _commits(out: Path) -> str:
    """The commit(s) the study's runs used, from OUT/study.json."""
    try:
        commits = json.loads((out / "study.json").read_text()).get("commits", [])
    except (OSError, ValueError):
        commits = []
    if not commits:
        return "not recorded"
    return "commit " + ", then ".join(f"`{commit}`" for commit in commits) + " of this repository"


def _protocol(results) -> str:
    for seeds in results.values():
        for row in seeds.values():
            return row["protocol"]
    return "synthetic exact match"
