"""Bad inputs through the public entry points (``rsfuse`` CLI, ``recipes/mf_rsvlm_train.py``, the Python API):
each case asserts the outcome a user sees — the exit status, one line naming the file / sample / key and the reason,
and that nothing is lost. The table of cases is docs/RELIABILITY.md."""

import errno
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from factories.console import one_line, run_rsfuse
from factories.train_run import child_env, recipe_args, tiny_data
from PIL import Image

from rsfuse.recipes.config import ConfigError
from rsfuse.recipes.train import main as train_main
from rsfuse.recipes.train_args import SCHEMA, parse_args
from rsfuse.train.checkpointing import list_checkpoints
from rsfuse.train.lock import LOCK_FILE
from rsfuse.train.metrics import read_metrics

# ---------------------------------------------------------------------------------------------- configuration ranges

OUT_OF_RANGE = [
    ("train.batch_size", "-1"),
    ("train.batch_size", "0"),
    ("train.grad_accum", "0"),
    ("eval.batch_size", "0"),
    ("train.lr", "0"),
    ("train.lr", "-1e-3"),
    ("train.lr", "nan"),
    ("train.lr", "inf"),
    ("train.vit_lr", "-1"),
    ("max_steps", "-5"),
    ("save_every", "-1"),
    ("keep_last", "-2"),
    ("train.warmup_ratio", "1.0"),
    ("train.warmup_ratio", "-0.1"),
    ("data.max_length", "0"),
    ("data.num_workers", "-1"),
    ("train.max_grad_norm", "-1"),
    ("train.weight_decay", "-0.1"),
    ("train.epochs", "0"),
    ("train.val_every", "-1"),
    ("eval.max_new_tokens", "0"),
]


@pytest.mark.parametrize("key, value", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_at_parse_time_naming_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        parse_args([f"{key}={value}"])
    assert repr(key) in str(error.value)


@pytest.mark.parametrize("key, value", [("train.batch_size", "-1"), ("train.lr", "nan"), ("train.warmup_ratio", "1")])
def test_out_of_range_value_on_the_command_line_is_one_line_exit_2(key, value, capsys):
    assert train_main([f"{key}={value}", "output_dir=/nonexistent/never-created"]) == 2
    line = one_line(capsys.readouterr().err)
    assert key in line


def test_every_numeric_key_declares_its_range():
    for key, field in SCHEMA.items():
        if field.scalar in (int, float) and key != "seed":
            assert field.bounds(), f"{key} declares no range"


def test_boundary_values_are_accepted():
    config = parse_args(["max_steps=0", "save_every=0", "keep_last=0", "train.warmup_ratio=0", "data.num_workers=0",
                         "train.batch_size=1", "train.grad_accum=1", "data.max_length=1", "train.max_grad_norm=0"])
    assert config.max_steps == 0 and config.train.warmup_ratio == 0.0
    assert math.isfinite(config.train.lr)


# ---------------------------------------------------------------------------------------------- training runs



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("bad_inputs_data"))


def _data_root(data: list[str]) -> Path:
    return Path(next(item for item in data if item.startswith("data.image_root=")).split("=", 1)[1])


def _train(output: Path, data: list[str], *extra: str, capsys=None) -> tuple[int, str]:
    code = train_main(recipe_args(output, data, *extra))
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def _last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("[rsfuse]")
             and "%|" not in line]  # progress bars and notes aside
    assert lines, err
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 6-step run: what every recovery must reproduce."""
    output = tmp_path_factory.mktemp("reference")
    assert train_main(recipe_args(output, data, "save_every=0")) == 0
    return output


def _losses(output: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_metrics(output / "metrics.jsonl")]


def _bad_copy(data: list[str], tmp_path: Path, mutate) -> list[str]:
    """The tiny data set with its train.json rewritten by ``mutate(records, root)``."""
    root = _data_root(data)
    records = json.loads((root / "train.json").read_text())
    mutate(records, root)
    bad_json = tmp_path / "bad_train.json"
    bad_json.write_text(json.dumps(records))
    return [item if not item.startswith("data.json=") else f"data.json={bad_json}" for item in data]


def test_data_max_length_beyond_the_context_is_refused_naming_both(data, tmp_path, capsys):
    code, err = _train(tmp_path / "run", data, "data.max_length=600", capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert "data.max_length" in line and "max_position_embeddings = 512" in line and "600" in line


def test_second_run_in_the_same_output_dir_is_refused_naming_the_holder(data, tmp_path, capsys):
    output = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rsfuse.train.lock import RunLock; lock = RunLock(sys.argv[1]).acquire();"
         " print('locked', flush=True); time.sleep(120)", str(output)],
        env=child_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _train(output, data, capsys=capsys)
        assert code == 2
        line = _last_line(err)
        assert f"pid {holder.pid}" in line and str(output) in line
        assert not (output / "recipe.yaml").exists() and not (output / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_bad_images_are_found_before_the_first_step(data, tmp_path, capsys):
    def mutate(records, root):
        records[1]["image"] = "missing.png"

    bad = _bad_copy(data, tmp_path, mutate)
    code, err = _train(tmp_path / "run", bad, capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert "bad_train.json: sample 1" in line and "missing_image" in line and "missing.png" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before any step


def test_skip_bad_skips_counts_by_reason_and_reports(data, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)

    def mutate(records, root):
        records[0]["image"] = "missing.png"
        records[1]["image"] = str(corrupt)  # absolute: outside the root
        records[2]["image"] = "../" + records[2]["image"]
        shutil.copy(corrupt, root / "corrupt_in_root.png")
        records[3]["image"] = "corrupt_in_root.png"

    bad = _bad_copy(data, tmp_path, mutate)
    output = tmp_path / "run"
    code, err = _train(output, bad, "data.skip_bad=true", capsys=capsys)
    assert code == 0, err
    assert "skipped: image_outside_root 2, missing_image 1, unreadable_image 1" in err
    summary = json.loads((output / "summary.json").read_text())
    assert summary["data"]["train"]["skipped"] == {"missing_image": 1, "image_outside_root": 2, "unreadable_image": 1}
    first = read_metrics(output / "metrics.jsonl")[0]
    assert first["data_skipped"]["train"]["missing_image"] == 1


def test_image_outside_the_root_is_refused_unless_allowed(data, tmp_path, capsys):
    def mutate(records, root):
        outside = tmp_path / "outside.png"
        shutil.copy(root / records[0]["image"], outside)
        records[0]["image"] = str(outside)

    bad = _bad_copy(data, tmp_path, mutate)
    code, err = _train(tmp_path / "run", bad, "max_steps=1", capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert "sample 0" in line and "image_outside_root" in line and "data.allow_outside_root" in line
    code, err = _train(tmp_path / "run2", bad, "max_steps=1", "data.allow_outside_root=true", capsys=capsys)
    assert code == 0, err


def test_four_band_tiff_needs_data_bands(data, tmp_path, capsys):
    def mutate(records, root):
        rgb = np.asarray(Image.open(root / records[0]["image"]).convert("RGB")).astype(np.uint16) * 16
        nir = rgb[..., :1]
        tifffile.imwrite(root / "four_band.tif", np.concatenate([nir, rgb[..., ::-1]], axis=-1),
                         photometric="minisblack", planarconfig="contig")
        records[0]["image"] = "four_band.tif"

    bad = _bad_copy(data, tmp_path, mutate)
    code, err = _train(tmp_path / "run", bad, "max_steps=1", capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert "four_band.tif" in line and "4-band TIFF" in line and "sample 0" in line
    code, err = _train(tmp_path / "run2", bad, "max_steps=1", "data.bands=[3,2,1]", capsys=capsys)
    assert code == 0, err


def test_full_disk_during_a_save_keeps_the_last_checkpoint(data, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the checkpoint of step 4
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    output = tmp_path / "run"
    code, err = _train(output, data, capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert f"no space left on {output / 'checkpoints'}" in line and "step_2" in line
    assert [path.name for path in list_checkpoints(output / "checkpoints")] == ["step_2"]
    assert not [path for path in (output / "checkpoints").iterdir() if path.name.startswith(".")]


def test_resume_auto_falls_back_from_a_corrupt_newest_checkpoint(data, reference, tmp_path, capsys):
    output = tmp_path / "run"
    assert _train(output, data, "save_every=2", "keep_last=3", capsys=capsys)[0] == 0
    shutil.rmtree(output / "checkpoints" / "step_6")  # as if killed after step_4 was written
    newest = output / "checkpoints" / "step_4" / "optimizer.pt"
    newest.write_bytes(b"not a torch file")
    code, err = _train(output, data, "save_every=2", "keep_last=3", capsys=capsys)
    assert code == 0, err
    assert f"{newest}: unreadable" in err and "falling back to" in err and "step_2" in err
    assert _losses(output) == _losses(reference)


@pytest.mark.parametrize("name", ["optimizer.pt", "trainer_state.pt", "rng_rank0.pt", "model.safetensors"])
def test_corrupt_checkpoint_file_is_named(data, tmp_path, capsys, name):
    output = tmp_path / "run"
    assert _train(output, data, "max_steps=2", "save_every=2", capsys=capsys)[0] == 0
    broken = output / "checkpoints" / "step_2" / name
    broken.write_bytes(broken.read_bytes()[:40])
    code, err = _train(tmp_path / "again", data, "max_steps=4", f"resume={broken.parent}", capsys=capsys)
    assert code == 2
    line = _last_line(err)
    assert str(broken) in line


def test_unexpected_failure_mid_run_saves_a_checkpoint_then_resume_loses_nothing(
    data, reference, tmp_path, capsys, monkeypatch
):
    from rsfuse.data.instructions import InstructionDataset

    real = InstructionDataset._load
    calls = {"n": 0}

    def failing(self, index):
        if self.json_path.name == "train.json":
            calls["n"] += 1
            if calls["n"] == 9:  # the first sample of step 3 (batch 4)
                raise RuntimeError("simulated failure")
        return real(self, index)

    monkeypatch.setattr(InstructionDataset, "_load", failing)
    output = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated failure"):
        train_main(recipe_args(output, data, "save_every=0"))
    err = capsys.readouterr().err
    assert "step 3 failed" in err
    assert [path.name for path in list_checkpoints(output / "checkpoints")] == ["step_2"]
    monkeypatch.setattr(InstructionDataset, "_load", real)
    assert train_main(recipe_args(output, data, "save_every=0")) == 0
    assert _losses(output) == _losses(reference)
    from rsfuse.checkpoints.io import iter_weight_shards

    def weights(folder):
        return {key: value for _, shard in iter_weight_shards(folder / "final") for key, value in shard.items()}

    expected, got = weights(reference), weights(output)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_stale_lock_of_a_dead_process_is_taken_over(data, tmp_path, capsys):
    output = tmp_path / "run"
    output.mkdir()
    (output / LOCK_FILE).write_text(json.dumps({"pid": 4_000_000, "host": "elsewhere"}))
    code, err = _train(output, data, "max_steps=1", capsys=capsys)
    assert code == 0, err
    assert "stale lock" in err and "4000000" in err


# ---------------------------------------------------------------------------------------------- the console script


def test_cli_expected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    result = run_rsfuse("train", "train.batch_size=-1", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert "train.batch_size" in one_line(result.stderr)
    debug = run_rsfuse("--debug", "train", "train.batch_size=-1", f"output_dir={tmp_path}")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    by_env = run_rsfuse("train", "train.batch_size=-1", f"output_dir={tmp_path}", env=child_env(RSFUSE_DEBUG="1"))
    assert by_env.returncode == 2 and "Traceback" in by_env.stderr


def test_cli_data_error_is_one_line_naming_file_and_sample(data, tmp_path):
    def mutate(records, root):
        records[2]["image"] = "nowhere.png"

    bad = _bad_copy(data, tmp_path, mutate)
    result = run_rsfuse("train", *recipe_args(tmp_path / "run", bad))
    assert result.returncode == 2, result.stderr[-2000:]
    line = _last_line(result.stderr)
    assert "bad_train.json: sample 2" in line and "nowhere.png" in line


@pytest.mark.slow  # three model loads in subprocesses (~20 s)
def test_cli_predict_bands_for_a_four_band_tiff(reference, tmp_path):
    bands = np.random.default_rng(0).integers(0, 4000, (40, 40, 4)).astype(np.uint16)
    image = tmp_path / "scene.tif"
    tifffile.imwrite(image, bands, photometric="minisblack", planarconfig="contig")
    common = ["predict", "--model", str(reference / "final"), "--image", str(image), "--question", "What is it?",
              "--max-new-tokens", "3", "--device", "cpu"]
    refused = run_rsfuse(*common)
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert "scene.tif" in line and "4-band TIFF" in line and ("--bands" in line or "bands=" in line)
    answered = run_rsfuse(*common, "--bands", "3,2,1")
    assert answered.returncode == 0, answered.stderr[-2000:]
    bad_bands = run_rsfuse(*common, "--bands", "3,2")
    assert bad_bands.returncode == 2 and "--bands" in one_line(bad_bands.stderr)
