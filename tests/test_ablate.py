"""``studies/ablate_synthetic`` (``python -m studies.ablate_synthetic``): the plumbing on a micro budget (one variant pair, one seed, two steps) and the
report's arithmetic."""

import json
import re
import sys
import time
from pathlib import Path

import pytest

from rsfuse.synthetic.benchmark import generate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the studies folder sits beside the package, as `python -m studies...` sees it

import studies.ablate_synthetic as ablate  # noqa: E402


def test_mean_std_and_verdict():
    assert ablate.mean_std([0.5]) == (0.5, None)
    mean, std = ablate.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    delta, word = ablate.verdict([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])
    # Worked by hand: std 10 points on each side, SE = sqrt(100/3 + 100/3) = 8.165.
    assert delta == pytest.approx(40.0) and word == "holds (Δ > 2 standard errors, SE 8.2)"
    delta, se, word = ablate.compare([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    assert delta == pytest.approx(-40.0) and se == pytest.approx(8.16497, abs=1e-4) and word == "reversed"
    # Δ = −0.33 but SE 8.2: the interval is far wider than ±2 points.
    assert ablate.compare([0.50, 0.60, 0.40], [0.49, 0.61, 0.41])[2] == "undecided"
    _, word = ablate.verdict([0.50, 0.60, 0.40], [0.49, 0.61, 0.41], max_seeds=5)
    assert word.endswith("more seeds needed, SE 8.2)")  # 3 seeds a side: the study may still add two
    _, word = ablate.verdict([0.50, 0.60, 0.40], [0.49, 0.61, 0.41], max_seeds=3)
    assert word.endswith("still so after 3 seeds a side, the most this study runs, SE 8.2)")
    # Δ = 50.5 − 50.2 = 0.3, SE = sqrt(0.25/3 + 0.21/3) = 0.392: Δ ± 2 SE = [−0.48, +1.08] inside ±2 points.
    delta, se, word = ablate.compare([0.500, 0.505, 0.510], [0.497, 0.503, 0.506])
    assert delta == pytest.approx(0.3) and se == pytest.approx(0.39158, abs=1e-4) and word == "negligible"
    # Δ = 1.5 with the same SE: > 2 SE, so it holds (small, but beyond the seed noise).
    assert ablate.compare([0.512, 0.517, 0.522], [0.497, 0.503, 0.506])[2] == "holds"
    _, word = ablate.verdict([0.3], [0.2])
    assert word == "undecided (1 seed on a side: no noise estimate)"
    assert ablate.cell([0.5, 0.7]) == "60.0 ± 14.1" and ablate.cell([]) == "–"


def test_job_order_and_arguments():
    names = ["global_only", "mf_rsvlm", "scales_1"]
    assert ablate.job_order(names, [0, 1], "goal-first") == [
        ("global_only", 0), ("mf_rsvlm", 0), ("global_only", 1), ("mf_rsvlm", 1), ("scales_1", 0), ("scales_1", 1)]
    assert ablate.job_order(names, [0, 1], "seed-major")[:3] == [("global_only", 0), ("mf_rsvlm", 0), ("scales_1", 0)]
    args = ablate.parse_args(["--variants", "all", "--seeds", "0,4"])
    assert args.variant_names == list(ablate.VARIANTS) and args.seed_list == [0, 4]
    assert len(ablate.VARIANTS) >= 9
    with pytest.raises(SystemExit):
        ablate.parse_args(["--variants", "global_only,bogus"])


def test_job_queue_keeps_a_variants_later_seeds_from_encoding_beside_its_first():
    queue = ablate.JobQueue(ablate.job_order(["global_only", "mf_rsvlm"], [0, 1, 2], "goal-first"))
    assert [queue.take(), queue.take()] == [("global_only", 0), ("mf_rsvlm", 0)]
    queue.done(("global_only", 0))
    assert queue.take() == ("global_only", 1)  # mf_rsvlm 1 waits: mf_rsvlm 0 is still writing the store
    queue.done(("global_only", 1))
    assert queue.take() == ("global_only", 2)
    queue.done(("global_only", 2))
    assert queue.take() == ("mf_rsvlm", 1)  # nothing else is pending: it goes anyway
    queue.done(("mf_rsvlm", 0))
    assert queue.take() == ("mf_rsvlm", 2)
    assert queue.take() is None and queue.running == [("mf_rsvlm", 1), ("mf_rsvlm", 2)]


def _fake_run(out, variant, seed, small):
    folder = out / "runs" / variant / f"seed{seed}" / "eval"
    folder.mkdir(parents=True)
    result = {"per_type": {}, "by_object_size": {"small": {"exact_accuracy": small}}, "avg": {"exact_accuracy": small},
              "protocol": "synthetic", "total": 10}
    (folder / "metrics.json").write_text(json.dumps({"result": result}))


def test_undecided_directions_get_more_seeds(tmp_path):
    args = ablate.parse_args(["--variants", "global_only,mf_rsvlm,scales_1", "--seeds", "3", "--max-seeds", "5"])
    assert args.all_seeds == [0, 1, 2, 3, 4]
    # mf_rsvlm vs global_only: +40 points, SE 8.2 -> holds. mf_rsvlm vs scales_1: +9.7, SE 8.2 -> undecided.
    for seed, (mf, glob, scales) in enumerate([(0.5, 0.1, 0.49), (0.6, 0.2, 0.61), (0.7, 0.3, 0.41)]):
        _fake_run(tmp_path, "mf_rsvlm", seed, mf)
        _fake_run(tmp_path, "global_only", seed, glob)
        _fake_run(tmp_path, "scales_1", seed, scales)
    assert ablate.undecided_jobs(args, tmp_path) == [("mf_rsvlm", 3), ("scales_1", 3)]
    for seed in (3, 4):
        _fake_run(tmp_path, "mf_rsvlm", seed, 0.6)
        _fake_run(tmp_path, "scales_1", seed, 0.5)
    assert ablate.undecided_jobs(args, tmp_path) == []  # still undecided, but 5 seeds is the most
    args.report = str(tmp_path / "ABLATIONS.md")
    (tmp_path / "study.json").write_text(json.dumps({"started": time.time() - 7200}))  # two hours ago
    for seed in range(3):
        steps = "".join(json.dumps({"step": step, "step_s": 600.0}) + "\n" for step in (1, 2))
        (tmp_path / "runs" / "global_only" / f"seed{seed}" / "metrics.jsonl").write_text(steps)
    text = ablate.write_report(args, tmp_path, "python -m studies.ablate_synthetic")
    assert ("Completed runs**: 9 of the 9 planned (3 variants × seeds [0, 1, 2]), and 4 extra seeds of directions "
            "undecided after 3 (up to 5 seeds per variant).") in text
    assert ("Training time summed over the runs: 1.0 h. Study span, first start to last finished run (pauses "
            "included): 2.0 h.") in text
    off = ablate.parse_args(["--variants", "global_only,mf_rsvlm,scales_1", "--seeds", "3"])
    assert off.all_seeds == [0, 1, 2]


def test_every_variant_builds_a_model_config():
    from rsfuse.model import MFRSVLM
    from rsfuse.recipes.train_args import load_config
    from rsfuse.train.setup import build_model_config

    shared = [item for item in ablate.STUDY_OVERRIDES if item.startswith(("model.", "train.trainable"))]
    for name, variant in ablate.VARIANTS.items():
        config = build_model_config(load_config(None, [*shared, *variant.overrides]), None)
        assert config.vision.hidden_size == 64 and config.vision.num_hidden_layers == 3, name
        if name == "global_only":
            assert not config.detail
        else:
            assert config.detail and len(MFRSVLM(config).injectors) == len(config.injection_layers), name
    assert build_model_config(load_config(None, [*shared, "model.injection_layers=[1,2,3,4]"]), None
                              ).injection_layer_indices == (0, 1, 2, 3)


def test_train_turns_image_merges_the_training_json(tmp_path):
    data = tmp_path / "data"
    generate(data, n_images=6, seed=0, size=112, workers=1)
    train = json.loads((data / "train.json").read_text())
    args = ablate.parse_args(["--train-turns", "image", "--out", str(tmp_path / "study")])
    args.train_json = ablate.prepare_train_json(args, data, tmp_path / "study")
    merged = json.loads(args.train_json.read_text())
    assert args.train_json == tmp_path / "study" / "shared" / "train_by_image.json"
    assert len(merged) == len({record["image"] for record in train})
    assert sorted(i for record in merged for i in record["merged_ids"]) == sorted(r["id"] for r in train)
    command = ablate.train_command(args, "mf_rsvlm", 0, data, tmp_path / "tok", tmp_path / "run", None)
    assert f"data.json={args.train_json}" in command and f"data.max_length={ablate.MERGED_MAX_LENGTH}" in command
    args = ablate.parse_args([])
    assert args.train_turns == "question" and ablate.prepare_train_json(args, data, tmp_path) == data / "train.json"
    with pytest.raises(SystemExit):
        ablate.parse_args(["--train-turns", "all"])


def test_kind_accuracies_by_hand(tmp_path):
    records = {"a": {"small_object": True, "kind": "vehicle", "question_type": "count", "answer": "2"},
               "b": {"small_object": True, "kind": "vehicle", "question_type": "count", "answer": "3"},
               "c": {"small_object": True, "kind": "vehicle", "question_type": "colour", "answer": "red"},
               "d": {"small_object": True, "kind": "ship", "question_type": "count", "answer": "1"},
               "e": {"small_object": False, "kind": None, "question_type": "scene", "answer": "river"}}
    (tmp_path / "eval").mkdir()
    predictions = [("a", "2"), ("b", "2"), ("c", "Red."), ("d", "1"), ("e", "river")]
    (tmp_path / "eval" / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": p}) + "\n" for i, p in predictions))
    assert ablate.kind_accuracies(tmp_path, records, "vehicle") == {"count": 0.5, "colour": 1.0}
    assert ablate.kind_accuracies(tmp_path / "missing", records, "vehicle") == {}


def test_train_seconds_sum_every_session_of_a_resumed_run(tmp_path):
    # A run cut after step 2 and resumed: its metrics.jsonl holds both sessions' steps; wall time would see only one.
    steps = [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "step_s": t}) + "\n"
                                                    for s, t in steps) + "\n")
    assert ablate.train_seconds(tmp_path / "metrics.jsonl") == 3.75
    assert ablate.train_seconds(tmp_path / "missing.jsonl") is None


def test_an_existing_benchmark_is_never_rewritten(tmp_path):
    data = tmp_path / "data"
    generate(data, n_images=10, seed=0, size=112, workers=1)
    before = {path.name: path.stat().st_mtime_ns for path in data.iterdir()}
    args = ablate.parse_args(["--data", str(data), "--images", "10", "--image-size", "112"])
    assert ablate.prepare_data(args, tmp_path / "study") == data
    for flags, named in ((["--images", "12", "--image-size", "112"], "--images 12 (written with 10)"),
                         (["--images", "10"], "--image-size 224 (written with 112)")):
        with pytest.raises(SystemExit, match=re.escape(named)):
            ablate.prepare_data(ablate.parse_args(["--data", str(data), *flags]), tmp_path / "study")
    assert {path.name: path.stat().st_mtime_ns for path in data.iterdir()} == before


@pytest.mark.slow
def test_micro_study_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate(data, n_images=20, seed=0, size=112, workers=1)
    report = tmp_path / "ABLATIONS.md"
    argv = ["--variants", "global_only,mf_rsvlm", "--seeds", "1", "--steps", "2", "--batch-size", "2",
            "--jobs", "2", "--out", str(tmp_path / "study"), "--data", str(data), "--images", "20",
            "--image-size", "112", "--vocab-size", "330",
            "--eval-limit", "4", "--max-new-tokens", "2", "--report", str(report),
            "--tower-steps", "3", "--extra", "data.max_length=400"]
    assert ablate.main(argv) == 0
    text = report.read_text()
    assert "| `global_only` |" in text and "| `mf_rsvlm` |" in text
    assert "Completed runs**: 2 of the 2 planned (2 variants × seeds [0])." in text
    assert "| `mf_rsvlm` | `global_only` |" in text  # the goal comparison row
    assert "Questions about the vehicle only" in text
    # One seed a side: the +10-point goal (a mean over 3 seeds) is not judged.
    assert "## Goal check" in text and "→ **not judged yet** (fewer than 3 seeds on a side)." in text
    assert "2 optimizer steps × batch 2" in text and "python -m studies.ablate_synthetic --variants" in text
    commits = json.loads((tmp_path / "study" / "study.json").read_text())["commits"]
    assert len(commits) == 1 and f"- **Code**: commit `{commits[0]}` of this repository." in text
    for variant in ("global_only", "mf_rsvlm"):
        run = tmp_path / "study" / "runs" / variant / "seed0"
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["samples"] == 4 and metrics["result"]["protocol"].startswith("synthetic")
        assert json.loads((run / "final" / "config.json").read_text())["detail"] == (variant == "mf_rsvlm")
    # Resumable: a second call finds every result and runs nothing.
    log = tmp_path / "study" / "runs" / "mf_rsvlm" / "seed0" / "run.log"
    before = log.read_text()
    assert ablate.main(argv) == 0
    assert log.read_text() == before
    assert ablate.main([*argv, "--report-only"]) == 0


def test_report_only_without_finished_runs_keeps_the_report(tmp_path, capsys):
    report = tmp_path / "ABLATIONS.md"
    report.write_text("committed figures\n")
    argv = ["--report-only", "--out", str(tmp_path / "nothing_here"), "--report", str(report)]
    assert ablate.main(argv) == 2
    assert report.read_text() == "committed figures\n"
    assert f"no finished run under {tmp_path / 'nothing_here' / 'runs'}" in capsys.readouterr().err
