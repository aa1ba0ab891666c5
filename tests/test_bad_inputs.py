"""Bad inputs through the public entry points (``rsfuse`` CLI, ``recipes/mf_rsvlm_train.py``, the Python API):
each case asserts the outcome a user sees — the exit status, one line naming the file / sample / key and the reason,
and that nothing is lost. The table of cases is docs/RELIABILITY.md."""

import math

import pytest

from rsfuse.recipes.config import ConfigError
from rsfuse.recipes.train_args import SCHEMA, parse_args
from rsfuse.recipes.train import main as train_main


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


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
    line = _one_line(capsys.readouterr().err)
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

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from factories.train_run import REPO, child_env, recipe_args, tiny_data  # noqa: E402
from PIL import Image  # noqa: E402

from rsfuse.train.checkpointing import list_checkpoints  # noqa: E402
from rsfuse.train.lock import LOCK_FILE  # noqa: E402
from rsfuse.train.metrics import read_metrics  # noqa: E402


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


def _rsfuse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsfuse", *args], capture_output=True, text=True, timeout=120,
                          env=env or child_env(), cwd=REPO)


def test_cli_expected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    result = _rsfuse("train", "train.batch_size=-1", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert "train.batch_size" in _one_line(result.stderr)
    debug = _rsfuse("--debug", "train", "train.batch_size=-1", f"output_dir={tmp_path}")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    by_env = _rsfuse("train", "train.batch_size=-1", f"output_dir={tmp_path}", env=child_env(RSFUSE_DEBUG="1"))
    assert by_env.returncode == 2 and "Traceback" in by_env.stderr


def test_cli_data_error_is_one_line_naming_file_and_sample(data, tmp_path):
    def mutate(records, root):
        records[2]["image"] = "nowhere.png"

    bad = _bad_copy(data, tmp_path, mutate)
    result = _rsfuse("train", *recipe_args(tmp_path / "run", bad))
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
    refused = _rsfuse(*common)
    assert refused.returncode == 2
    line = _one_line(refused.stderr)
    assert "scene.tif" in line and "4-band TIFF" in line and "--bands" in line or "bands=" in line
    answered = _rsfuse(*common, "--bands", "3,2,1")
    assert answered.returncode == 0, answered.stderr[-2000:]
    bad_bands = _rsfuse(*common, "--bands", "3,2")
    assert bad_bands.returncode == 2 and "--bands" in _one_line(bad_bands.stderr)


# ---------------------------------------------------------------------------------------------- model config.json fields

from factories.clip import write_hf_clip_vision  # noqa: E402
from factories.llama import write_hf_llama  # noqa: E402
from factories.llava_hf import write_hf_llava  # noqa: E402
from factories.mfrsvlm import MICRO_VISION, make_model, write_llava_folder, write_released_checkpoint  # noqa: E402
from factories.tokenizer import tiny_tokenizer_dir  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from rsfuse.checkpoints.io import CheckpointError  # noqa: E402
from rsfuse.cli import main as rsfuse_main  # noqa: E402
from rsfuse.model import MFRSVLM  # noqa: E402


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """One micro checkpoint folder per layout rsfuse reads."""
    root = tmp_path_factory.mktemp("layouts")
    make_model(seed=0).save_pretrained(root / "rsfuse", tokenizer=tiny_tokenizer_dir())
    write_released_checkpoint(root / "released")
    write_llava_folder(root / "llava")
    write_hf_llava(root / "llava_hf")
    write_hf_llama(root / "llama", "single")
    write_hf_clip_vision(root / "clip", config=MICRO_VISION)
    return root


def _load(layout: str, folder: Path, layouts: dict | Path):
    """The public API that reads ``folder`` of ``layout`` (the CLIP tower and the Llama come from ``from_parts``)."""
    if layout in ("rsfuse", "released", "llava_hf"):
        return MFRSVLM.from_pretrained(folder)
    if layout == "llava":
        return MFRSVLM.from_parts(vision=layouts / "clip", llava=folder)
    if layout == "llama":
        return MFRSVLM.from_parts(vision=layouts / "clip", llm=folder)
    return MFRSVLM.from_parts(vision=folder, llava=layouts / "llava")


def _with_field(layouts: Path, layout: str, tmp_path: Path, file: str, key: str, value) -> tuple[Path, Path]:
    """A copy of the ``layout`` folder whose ``file`` has the dotted ``key`` set to ``value``."""
    folder = tmp_path / layout
    shutil.copytree(layouts / layout, folder)
    path = folder / file
    data = json.loads(path.read_text())
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path.write_text(json.dumps(data))
    return folder, path


WRONG_FIELDS = [
    # (layout, file, key as it appears in the file, value)
    ("rsfuse", "config.json", "llm.hidden_size", "32"),
    ("rsfuse", "config.json", "llm.hidden_size", 32.0),
    ("rsfuse", "config.json", "llm.num_hidden_layers", [4]),
    ("rsfuse", "config.json", "llm.num_hidden_layers", True),
    ("rsfuse", "config.json", "llm.num_attention_heads", -4),
    ("rsfuse", "config.json", "llm.num_key_value_heads", 0),
    ("rsfuse", "config.json", "llm.head_dim", "8"),
    ("rsfuse", "config.json", "llm.vocab_size", "512"),
    ("rsfuse", "config.json", "llm.intermediate_size", 0),
    ("rsfuse", "config.json", "llm.max_position_embeddings", 256.5),
    ("rsfuse", "config.json", "llm.rms_norm_eps", "x"),
    ("rsfuse", "config.json", "llm.rope_theta", "big"),
    ("rsfuse", "config.json", "llm.initializer_range", "x"),
    ("rsfuse", "config.json", "llm.tie_word_embeddings", "no"),
    ("rsfuse", "config.json", "llm.attention_bias", 1),
    ("rsfuse", "config.json", "llm.bos_token_id", 1.5),
    ("rsfuse", "config.json", "llm.eos_token_id", "2"),
    ("rsfuse", "config.json", "llm.pad_token_id", [0]),
    ("rsfuse", "config.json", "llm.rope_parameters.factor", "2"),
    ("rsfuse", "config.json", "vision.hidden_size", "32"),
    ("rsfuse", "config.json", "vision.num_hidden_layers", [3]),
    ("rsfuse", "config.json", "vision.num_attention_heads", -2),
    ("rsfuse", "config.json", "vision.image_size", 32.0),
    ("rsfuse", "config.json", "vision.layer_norm_eps", "1e-5"),
    ("rsfuse", "config.json", "global_layer", "3"),
    ("rsfuse", "config.json", "detail_layers", "1,2"),
    ("rsfuse", "config.json", "window_scales", [True]),
    ("rsfuse", "config.json", "stack_factor", 2.0),
    ("rsfuse", "config.json", "injection_layers", 2),
    ("rsfuse", "config.json", "detail", "yes"),
    ("rsfuse", "config.json", "image_token_index", "-200"),
    ("rsfuse", "config.json", "residual_scale_init", "1"),
    ("released", "config.json", "hidden_size", "32"),
    ("released", "config.json", "num_hidden_layers", [4]),
    ("released", "config.json", "num_attention_heads", -4),
    ("released", "config.json", "vocab_size", 512.0),
    ("released", "config.json", "deepstack_detail_layers", ["a"]),
    ("released", "config.json", "deepstack_window_scales", ["x"]),
    ("released", "config.json", "deepstack_downsample_factor", "2"),
    ("released", "config.json", "deepstack_downsample_factor", 2.5),
    ("released", "config.json", "image_token_index", 3.5),
    ("released", "config.json", "mm_vision_select_layer", "3"),
    ("released", "vision_tower/config.json", "hidden_size", "32"),
    ("released", "vision_tower/config.json", "num_hidden_layers", True),
    ("released", "vision_tower/config.json", "num_attention_heads", -2),
    ("llama", "config.json", "hidden_size", 64.0),
    ("llama", "config.json", "num_attention_heads", -4),
    ("llava", "config.json", "num_hidden_layers", [4]),
    ("llava", "config.json", "mm_vision_select_layer", "x"),
    ("llava_hf", "config.json", "text_config.hidden_size", "32"),
    ("llava_hf", "config.json", "text_config.num_attention_heads", -4),
    ("llava_hf", "config.json", "vision_config.num_hidden_layers", False),
    ("llava_hf", "config.json", "tie_word_embeddings", "yes"),
    ("llava_hf", "config.json", "multimodal_projector_bias", "no"),
    ("clip", "config.json", "intermediate_size", "64"),
    ("clip", "config.json", "patch_size", -4),
]


@pytest.mark.parametrize("layout, file, key, value", WRONG_FIELDS, ids=lambda v: str(v))
def test_wrongly_typed_config_field_is_refused_naming_file_and_key(layouts, tmp_path, layout, file, key, value):
    folder, path = _with_field(layouts, layout, tmp_path, file, key, value)
    with pytest.raises(CheckpointError) as error:
        _load(layout, folder, layouts)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and f"'{key}'" in message, message


INTEGER_WEIGHTS = [
    # (layout, weights file, stored key)
    ("rsfuse", "model-00001-of-00001.safetensors", "projector.0.bias"),
    ("released", "model-00001-of-00002.safetensors", None),  # the shard's first key
    ("released", "model-00002-of-00002.safetensors", "model.deepstack_residual_scale"),
    ("released", "vision_tower/pytorch_model.bin", "vision_model.post_layernorm.weight"),
    ("llama", "model.safetensors", "model.norm.weight"),
    ("llava", "model-00002-of-00002.safetensors", "model.mm_projector.2.weight"),
    ("llava_hf", "model.safetensors", None),
    ("clip", "model.safetensors", "vision_model.embeddings.class_embedding"),
]


@pytest.mark.parametrize("layout, file, key", INTEGER_WEIGHTS)
def test_integer_weight_is_refused_naming_file_and_key(layouts, tmp_path, layout, file, key):
    folder = tmp_path / layout
    shutil.copytree(layouts / layout, folder)
    path = folder / file
    if path.suffix == ".bin":
        tensors = torch.load(path, weights_only=True)
    else:
        tensors = load_file(str(path))
    key = key or sorted(tensors)[0]
    assert tensors[key].is_floating_point()
    tensors[key] = tensors[key].round().to(torch.int64)
    if path.suffix == ".bin":
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        _load(layout, folder, layouts)
    message = str(error.value)
    assert str(path) in message and repr(key) in message and "int64" in message, message


# ---------------------------------------------------------------------------------------------- the CLI's other commands


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _command(command: str, model: Path, image: Path, tmp_path: Path) -> list[str]:
    if command == "predict":
        return ["predict", "--model", str(model), "--image", str(image), "--question", "What is it?", "--device", "cpu",
                "--max-new-tokens", "4"]
    if command == "viz":
        return ["viz", "--model", str(model), "--image", str(image), "--question", "What is it?",
                "--out", str(tmp_path / "viz.png")]
    if command == "convert":
        return ["convert", str(model), str(tmp_path / "converted")]
    records = [{"id": "r0", "image": image.name, "question_type": "count", "answer": "3",
                "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]}]
    (image.parent / "bench.json").write_text(json.dumps(records))
    return ["eval", f"model={model}", "task=synthetic", f"data={image.parent / 'bench.json'}",
            f"output_dir={tmp_path / 'eval'}"]


@pytest.mark.parametrize("command", ["predict", "convert", "viz", "eval"])
def test_cli_model_with_a_wrongly_typed_config_field_is_one_line_exit_2(layouts, image, tmp_path, capsys, command):
    folder, path = _with_field(layouts, "rsfuse", tmp_path, "config.json", "llm.num_attention_heads", -4)
    assert rsfuse_main(_command(command, folder, image, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"rsfuse {command}: ") and str(path) in line and "'llm.num_attention_heads'" in line


@pytest.mark.parametrize("command", ["predict", "convert", "viz", "eval"])
def test_cli_model_with_an_integer_weight_is_one_line_exit_2(layouts, image, tmp_path, capsys, command):
    folder = tmp_path / "rsfuse"
    shutil.copytree(layouts / "rsfuse", folder)
    path = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(str(path))
    tensors["projector.0.weight"] = tensors["projector.0.weight"].to(torch.int32)
    save_file(tensors, str(path))
    assert rsfuse_main(_command(command, folder, image, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line and "'projector.0.weight'" in line


@pytest.mark.parametrize("command", ["predict", "convert"])
def test_cli_missing_model_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, image, capsys, monkeypatch,
                                                                            command):
    argv = _command(command, tmp_path / "nowhere", image, tmp_path)
    assert rsfuse_main(argv) == 2
    assert "nowhere" in _one_line(capsys.readouterr().err)
    assert rsfuse_main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "nowhere" in err.strip().splitlines()[-1]
    monkeypatch.setenv("RSFUSE_DEBUG", "1")
    assert rsfuse_main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_convert_main_exits_2_with_one_line(tmp_path, capsys):
    from rsfuse.model.convert import main as convert_main

    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere" in _one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- generation limits


def test_predict_huge_max_new_tokens_is_refused_in_one_line(layouts, image):
    result = _rsfuse("predict", "--model", str(layouts / "rsfuse"), "--image", str(image), "--question", "What is it?",
                     "--device", "cpu", "--max-new-tokens", "1000000000")
    assert result.returncode == 2, result.stderr[-2000:]
    line = _one_line(result.stderr)
    assert "max_new_tokens 1000000000" in line and "max_position_embeddings = 256" in line


@pytest.fixture(scope="module")
def nan_model(layouts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nan") / "rsfuse"
    shutil.copytree(layouts / "rsfuse", folder)
    path = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(str(path))
    tensors["llm.model.norm.weight"][3] = float("nan")
    save_file(tensors, str(path))
    return folder


def test_nan_weights_are_refused_at_load_naming_the_key(nan_model, image, capsys):
    with pytest.raises(CheckpointError, match=r"non-finite .*'llm\.model\.norm\.weight' \(1 of 32 values\)"):
        MFRSVLM.from_pretrained(nan_model)
    assert rsfuse_main(_command("predict", nan_model, image, nan_model)) == 2
    assert "'llm.model.norm.weight'" in _one_line(capsys.readouterr().err)


def test_nan_weights_loaded_anyway_give_a_non_finite_logits_error(nan_model, image, capsys, monkeypatch):
    from rsfuse.model.predict import answer
    from rsfuse.processor import MFRSVLMProcessor

    model = MFRSVLM.from_pretrained(nan_model, check_finite=False)
    processor = MFRSVLMProcessor.from_pretrained(nan_model)
    with pytest.raises(ValueError, match="non-finite logits"):
        answer(model, processor.tokenizer, image, "What is it?", processor=processor, max_new_tokens=4)
    import rsfuse.checkpoints.io as io

    monkeypatch.setattr(io, "check_finite_tensors", lambda *args, **kwargs: None)  # as if check_finite=False
    assert rsfuse_main(_command("predict", nan_model, image, nan_model)) == 2
    assert "non-finite logits" in _one_line(capsys.readouterr().err)


def test_cli_unwritable_destination_is_one_line_naming_it(layouts, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert rsfuse_main(["convert", str(layouts / "rsfuse"), str(blocker)]) == 2
    assert str(blocker) in _one_line(capsys.readouterr().err)
