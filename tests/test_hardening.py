"""Issue 32 (hardening), outside the server: training and console-script cases through the public entry points
(the recipe's ``main(argv)``, ``rsfuse.cli.main``). The table of cases is docs/RELIABILITY.md."""

import json
from pathlib import Path

import pytest
import yaml

from factories.console import one_line
from factories.train_run import recipe_args, tiny_data
from rsfuse.cli import main as rsfuse_main
from rsfuse.recipes.train import main as train_main
from rsfuse.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("hardening_data"))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-step run with its checkpoint step_2."""
    output = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(recipe_args(output, data, "max_steps=2", "save_every=2")) == 0
    return output


def _errors(err: str) -> str:
    """stderr without the recipe's notes and progress bars."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("[rsfuse]") and "%|" not in line)


# ---------------------------------------------------------------------------------------------- resume settings


@pytest.mark.parametrize(("change", "expected"), [
    (["train.lr=3e-2"], ["train.lr: 0.003 in the checkpoint, 0.03 now"]),
    (["seed=99"], ["seed: 7 in the checkpoint, 99 now"]),
    (["seed=99", "model.llm.hidden_size=64"], ["seed: 7 in the checkpoint, 99 now",
                                               "model.llm.hidden_size: 32 in the checkpoint, 64 now"]),
])
def test_resume_auto_with_a_changed_run_defining_setting_is_refused(finished, data, capsys, change, expected):
    """Defect 4: a finished run's folder with a new configuration is refused by key, never silently resumed."""
    recorded = (finished / "recipe.yaml").read_text()
    capsys.readouterr()
    assert train_main(recipe_args(finished, data, "max_steps=2", "save_every=2", *change)) == 2
    line = one_line(_errors(capsys.readouterr().err))
    for fragment in expected:
        assert fragment in line
    assert "step_2" in line and "new output_dir" in line
    assert (finished / "recipe.yaml").read_text() == recorded  # the run's record keeps its own settings


def test_resume_with_a_raised_max_steps_continues_and_says_the_schedule_changes(data, tmp_path, capsys):
    output = tmp_path / "run"
    assert train_main(recipe_args(output, data, "max_steps=2", "save_every=2")) == 0
    capsys.readouterr()
    assert train_main(recipe_args(output, data, "max_steps=3", "save_every=2", "num_threads=2",
                                  "train.log_every=2")) == 0
    err = capsys.readouterr().err
    assert "max_steps 2 -> 3" in err and "schedule" in err
    assert [record["step"] for record in read_metrics(output / "metrics.jsonl")][-1] == 3
    assert yaml.safe_load((output / "recipe.yaml").read_text())["max_steps"] == 3


def test_resuming_into_a_model_of_another_size_is_one_line(finished, data, tmp_path, capsys):
    """Even without a recipe.json to compare (an older checkpoint), the weights' shapes are named, no traceback."""
    import shutil

    step = tmp_path / "step_2"
    shutil.copytree(finished / "checkpoints" / "step_2", step)
    (step / "recipe.json").unlink()
    capsys.readouterr()
    code = train_main(recipe_args(tmp_path / "run", data, "max_steps=4", f"resume={step}",
                                  "model.llm.hidden_size=64"))
    line = one_line(_errors(capsys.readouterr().err))
    assert code == 2 and "model.safetensors: written for a model of another size" in line and "(the model: " in line


# ---------------------------------------------------------------------------------------------- configuration


def test_unknown_template_is_one_line_naming_the_key(tmp_path, capsys):
    assert rsfuse_main(["train", "data.template=bogus", f"output_dir={tmp_path}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "data.template" in line and "'bogus'" in line and "vicuna_v1" in line
    assert rsfuse_main(["eval", "template=bogus", f"output_dir={tmp_path}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "'template'" in line and "'bogus'" in line


def test_latin1_config_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    config = tmp_path / "latin.yaml"
    config.write_bytes("train:\n  lr: 0.001\n# caf\u00e9\n".encode("latin-1"))
    assert rsfuse_main(["train", "--config", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(config) in line and "not UTF-8" in line and "line 3" in line


def test_yaml_alias_expansion_is_bounded(tmp_path, capsys):
    """A few hundred bytes of nested aliases (x9 per level) are refused before anything is expanded."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]" for level in range(1, 9)]
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join([*lines, "unknown_key: *a8"]) + "\n")
    assert config.stat().st_size < 700
    started = time.perf_counter()
    assert train_main(["--config", str(config)]) == 2
    assert time.perf_counter() - started < 5
    line = one_line(capsys.readouterr().err)
    assert str(config) in line and "aliases" in line and "100000" in line


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_dir_that_is_a_file_is_one_line_naming_the_key(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    target = blocker if where == "file" else blocker / "run"
    for argv in ([f"output_dir={target}"], ["eval", f"output_dir={target}", "model=x", "data=y"]):
        assert (rsfuse_main(argv) if argv[0] == "eval" else train_main(argv)) == 2
        line = one_line(_errors(capsys.readouterr().err))
        assert "output_dir" in line and str(blocker) in line and "file" in line
    assert blocker.read_text() == "not a folder"


def test_read_only_output_dir_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only file system (simulated: the tests may run as root, whom permissions do not stop)."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path else real(path, mode))
    assert train_main([f"output_dir={tmp_path / 'run'}"]) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert "output_dir" in line and "not writable" in line and str(tmp_path) in line


def test_tokenizer_of_random_bytes_is_one_line(data, tmp_path, capsys):
    import os

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(os.urandom(600))
    overrides = [item for item in data if not item.startswith("data.tokenizer=")] + [f"data.tokenizer={folder}"]
    assert rsfuse_main(["train", *recipe_args(tmp_path / "run", overrides, "max_steps=1")]) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert str(folder / "tokenizer.model") in line and "SentencePiece" in line


# ---------------------------------------------------------------------------------------------- rsfuse eval / predict


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from factories.mfrsvlm import make_model
    from factories.tokenizer import tiny_tokenizer_dir

    folder = tmp_path_factory.mktemp("model") / "micro"
    make_model(seed=2).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    from factories.eval_data import write_synthetic_benchmark

    return write_synthetic_benchmark(tmp_path_factory.mktemp("bench"))


def _eval(model: Path, data: Path, out: Path, *extra: str) -> int:
    return rsfuse_main(["eval", "task=synthetic", f"model={model}", f"data={data}", f"output_dir={out}",
                        "max_new_tokens=2", "progress=false", *extra])


def test_eval_tokenizer_larger_than_the_vocabulary_is_one_line(bench, tmp_path, capsys):
    from factories.mfrsvlm import make_model, micro_llm
    from factories.tokenizer import tiny_tokenizer_dir

    small = tmp_path / "small"
    make_model(seed=1, llm=micro_llm(vocab_size=300)).save_pretrained(small)
    assert _eval(small, bench, tmp_path / "out", f"tokenizer={tiny_tokenizer_dir()}") == 2
    line = one_line(capsys.readouterr().err)
    assert "512 pieces" in line and "vocabulary of 300" in line and "tokenizer.model" in line


def test_eval_tokenizer_of_random_bytes_is_one_line(model_dir, bench, tmp_path, capsys):
    import os

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(os.urandom(600))
    assert _eval(model_dir, bench, tmp_path / "out", f"tokenizer={folder}") == 2
    line = one_line(capsys.readouterr().err)
    assert str(folder / "tokenizer.model") in line


def test_eval_torn_line_inside_predictions_is_one_line_and_the_file_is_kept(model_dir, bench, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(model_dir, bench, out) == 0
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines()
    torn = "\n".join([lines[0][:30], *lines[1:]]) + "\n"  # a torn line, then a whole one
    path.write_text(torn)
    capsys.readouterr()
    assert _eval(model_dir, bench, out) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{path}: line 1 is not valid JSON" in line and "delete that line" in line
    assert path.read_text() == torn


@pytest.mark.parametrize(("task", "field"), [("synthetic", "answer"), ("vrsbench_vqa", "ground_truth")])
def test_eval_record_with_a_null_answer_is_a_bad_record(model_dir, tmp_path, capsys, task, field):
    from factories.eval_data import write_image

    write_image(tmp_path / "a.png")
    if task == "synthetic":
        entries = [{"id": "s0", "image": "a.png", "question_type": "count", "answer": None,
                    "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]}]
    else:
        entries = [{"image_id": "a.png", "question": "How many?", "ground_truth": None, "question_id": 7,
                    "type": "count", "dataset": "DOTA"}]
    data = tmp_path / "bench.json"
    data.write_text(json.dumps(entries))
    assert rsfuse_main(["eval", f"task={task}", f"model={model_dir}", f"data={data}", f"image_root={tmp_path}",
                        f"output_dir={tmp_path / 'out'}", "max_new_tokens=2", "progress=false"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(data) in line and "entry 0" in line and f"'{field}': null" in line


def test_eval_output_dir_in_use_by_another_evaluation_is_refused(model_dir, bench, tmp_path, capsys):
    import os

    from rsfuse.train.lock import RunLock

    out = tmp_path / "out"
    with RunLock(out, kind="evaluation"):  # another evaluation writing this folder
        assert _eval(model_dir, bench, out) == 2
    line = one_line(capsys.readouterr().err)
    assert "in use by another evaluation" in line and f"pid {os.getpid()}" in line
    assert not (out / "predictions.jsonl").exists()
    assert _eval(model_dir, bench, out) == 0  # free again


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7"])
def test_predict_with_an_unavailable_device_is_one_line(model_dir, tmp_path, capsys, device):
    import torch

    from factories.eval_data import write_image

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    image = tmp_path / "a.png"
    write_image(image)
    assert rsfuse_main(["predict", "--model", str(model_dir), "--image", str(image), "--question", "What?",
                        "--device", device]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--device '{device}'" in line


# ---------------------------------------------------------------------------------------------- Ctrl-C / SIGTERM


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 6-step run without periodic checkpoints."""
    output = tmp_path_factory.mktemp("reference")
    assert train_main(recipe_args(output, data, "save_every=0")) == 0
    return output


def _final_weights(output: Path) -> dict:
    from rsfuse.checkpoints.io import iter_weight_shards

    return {key: value for _, shard in iter_weight_shards(output / "final") for key, value in shard.items()}


@pytest.mark.parametrize(("signal_name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_with_save_every_0_saves_the_finished_steps_then_resume_loses_nothing(
    data, reference, tmp_path, capsys, monkeypatch, signal_name, status
):
    import os
    import signal

    import torch

    from rsfuse.data.instructions import InstructionDataset
    from rsfuse.train.checkpointing import list_checkpoints

    real = InstructionDataset._load
    calls = {"n": 0}

    def interrupted(self, index):
        if self.json_path.name == "train.json":
            calls["n"] += 1
            if calls["n"] == 13:  # the first sample of step 4 (batch 4)
                if signal_name == "SIGINT":
                    raise KeyboardInterrupt  # what Ctrl-C raises
                os.kill(os.getpid(), signal.SIGTERM)
        return real(self, index)

    monkeypatch.setattr(InstructionDataset, "_load", interrupted)
    output = tmp_path / "run"
    assert train_main(recipe_args(output, data, "save_every=0")) == status
    line = one_line(_errors(capsys.readouterr().err))
    assert f"interrupted by {signal_name} after step 3" in line and str(output / "checkpoints" / "step_3") in line
    assert [path.name for path in list_checkpoints(output / "checkpoints")] == ["step_3"]
    assert signal.getsignal(signal.SIGTERM) is not None and calls["n"] >= 13
    monkeypatch.setattr(InstructionDataset, "_load", real)
    assert train_main(recipe_args(output, data, "save_every=0")) == 0
    losses = [(record["step"], record["loss"]) for record in read_metrics(output / "metrics.jsonl")]
    assert losses == [(record["step"], record["loss"]) for record in read_metrics(reference / "metrics.jsonl")]
    expected, got = _final_weights(reference), _final_weights(output)
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


def test_interrupt_during_eval_is_one_line_and_keeps_the_answers(model_dir, bench, tmp_path, capsys, monkeypatch):
    from rsfuse.model import MFRSVLM

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MFRSVLM, "generate", interrupted)
    assert _eval(model_dir, bench, tmp_path / "out") == 130
    line = one_line(capsys.readouterr().err)
    assert "interrupted" in line and "predictions.jsonl" in line


# ---------------------------------------------------------------------------------------------- a full disk

SAFETENSORS_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                    'device" })')


def test_full_disk_at_the_first_checkpoint_write_is_one_line(data, tmp_path, capsys, monkeypatch):
    """The disk fills at the very first write (safetensors reports it in its own words, without an errno)."""
    import safetensors
    import safetensors.torch

    real = safetensors.torch.save_file

    def full(tensors, filename, *args, **kwargs):  # a module importing save_file now keeps it: fail checkpoints only
        if "checkpoints" not in str(filename):
            return real(tensors, filename, *args, **kwargs)
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    output = tmp_path / "run"
    assert train_main(recipe_args(output, data, "max_steps=2")) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert f"no space left on {output / 'checkpoints'}" in line and "no earlier checkpoint exists" in line
    assert not list((output / "checkpoints").iterdir())


def test_full_disk_in_torch_save_is_one_line(data, tmp_path, capsys, monkeypatch):
    """torch.save says only "file write failed": a disk with (simulated) no free space is named as full."""
    import collections
    import shutil

    import torch

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 0))
    output = tmp_path / "run"
    assert train_main(recipe_args(output, data, "max_steps=2")) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert f"no space left on {output / 'checkpoints'}" in line


def test_full_disk_while_final_is_written_is_one_line_and_leaves_nothing_behind(data, tmp_path, capsys, monkeypatch):
    import errno

    from rsfuse.model import MFRSVLM

    real = MFRSVLM.save_pretrained

    def full(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(MFRSVLM, "save_pretrained", full)
    output = tmp_path / "run"
    assert train_main(recipe_args(output, data, "max_steps=2", "save_every=2")) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert f"no space left on {output} while writing final/" in line and "step_2" in line and "resume=auto" in line
    assert not (output / ".final-tmp").exists() and not (output / ".final-tokenizer").exists()
    assert not (output / "final").exists()
    monkeypatch.setattr(MFRSVLM, "save_pretrained", real)
    assert train_main(recipe_args(output, data, "max_steps=2", "save_every=2")) == 0  # space freed
    assert (output / "final" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------- training data


def test_training_json_that_is_not_json_names_file_line_and_column(data, tmp_path, capsys):
    """The tokenizer is trained on the file first (no data.tokenizer): that read names the place too."""
    bad = tmp_path / "train.json"
    bad.write_text('[{"id": 1,\n  "image": x}]')
    overrides = [item for item in data if not item.startswith(("data.json=", "data.tokenizer="))]
    assert rsfuse_main(["train", *recipe_args(tmp_path / "run", overrides, f"data.json={bad}")]) == 2
    line = one_line(_errors(capsys.readouterr().err))
    assert f"{bad}: not valid JSON at line 2, column 12" in line
    with_tokenizer = [item for item in data if not item.startswith("data.json=")]
    assert rsfuse_main(["train", *recipe_args(tmp_path / "run2", with_tokenizer, f"data.json={bad}")]) == 2
    assert f"{bad}: not valid JSON at line 2, column 12" in one_line(_errors(capsys.readouterr().err))


# ---------------------------------------------------------------------------------------------- VRSBench folder


def _vrsbench_folder(root: Path, files: dict) -> Path:
    """The authors' per-image layout of the same questions: DATA_ROOT/annotations/Annotations_val/*.json and
    DATA_ROOT/images/Images_val/."""
    import shutil

    shutil.copytree(files["images"], root / "images" / "Images_val")
    captions = {entry["image_id"]: entry["ground_truth"] for entry in files["cap_entries"]}
    folder = root / "annotations" / "Annotations_val"
    folder.mkdir(parents=True)
    for image, caption in captions.items():
        pairs = [{"ques_id": entry["question_id"], "question": entry["question"], "answer": entry["ground_truth"],
                  "type": entry["type"]} for entry in files["vqa_entries"] if entry["image_id"] == image]
        (folder / f"{Path(image).stem}.json").write_text(json.dumps(
            {"image": image, "caption": caption, "qa_pairs": pairs}))
    return root


def test_vrsbench_per_image_annotation_folder_gives_the_eval_json_predictions(model_dir, tmp_path, capsys):
    from factories.eval_data import write_vrsbench

    files = write_vrsbench(tmp_path / "release")
    data_root = _vrsbench_folder(tmp_path / "VRSBench" / "val", files)
    runs = {}
    for name, data in (("json", files["vqa"]), ("folder", data_root),
                       ("annotations", data_root / "annotations" / "Annotations_val")):
        out = tmp_path / f"out_{name}"
        assert rsfuse_main(["eval", "task=vrsbench_vqa", f"model={model_dir}", f"data={data}",
                            f"output_dir={out}", "max_new_tokens=3", "progress=false"]) == 0
        runs[name] = {entry["id"]: entry["prediction"]
                      for entry in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
        metrics = json.loads((out / "metrics.json").read_text())
        runs[name + "_result"] = metrics["result"]
    assert set(runs["json"]) == {"0", "1", "2"}
    assert runs["folder"] == runs["json"] == runs["annotations"]
    assert runs["folder_result"] == runs["json_result"]
    out = tmp_path / "out_cap"
    assert rsfuse_main(["eval", "task=vrsbench_cap", "protocol=compat", f"model={model_dir}", f"data={data_root}",
                        f"output_dir={out}", "max_new_tokens=3", "progress=false"]) == 0
    ids = {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert ids == {"P0003_0002.png", "P0011_0000.png"}
