"""Issue 17, defect 2: evaluation never reuses stale predictions. Every predictions.jsonl line carries a fingerprint of
what changes an answer; a rerun that differs in any of them (model replaced at the same path, max_new_tokens,
template, dtype, data file) is refused with one line naming the differing field, exit status 2, file untouched."""

import json
import os
from pathlib import Path

import pytest

from factories.eval_data import write_synthetic_benchmark
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse.eval.fingerprint import data_digest, folder_digest, run_fingerprint
from rsfuse.eval.predictions import PredictionsMismatchError, differences, read_predictions
from rsfuse.recipes import evaluate as recipe


def _save(folder: Path, seed: int) -> Path:
    make_model(seed=seed).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


def test_folder_digest_sees_weights_by_stat_or_content(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    stat = folder_digest(folder, stat_suffixes=(".safetensors",))
    content = folder_digest(folder, content=True)
    weights.write_bytes(b"b" * 64)  # same size, new bytes
    os.utime(weights, ns=(1, 1))  # and an old mtime
    assert folder_digest(folder, stat_suffixes=(".safetensors",)) != stat
    assert folder_digest(folder, content=True) != content
    os.utime(weights, ns=(2, 2))
    changed = folder_digest(folder, content=True)
    assert folder_digest(folder, content=True) == changed  # content only: a touch changes nothing
    (folder / "config.json").write_text('{"x": 1}')  # small files always by content
    assert folder_digest(folder, content=True) != changed
    (folder / ".hidden").write_text("lock")
    assert folder_digest(folder, content=True) == folder_digest(folder, content=True)


def test_data_digest_of_file_and_folder(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[1]")
    first = data_digest(data)
    data.write_text("[2]")
    assert data_digest(data) != first and first.startswith("sha256:")
    (tmp_path / "cls" / "forest").mkdir(parents=True)
    assert data_digest(tmp_path / "cls").startswith("listing:")


def test_differences_name_each_field():
    stored = {"task": "t", "fingerprint": {"weights": "stat:1", "max_new_tokens": 16, "old": 1}}
    wanted = {"task": "t", "fingerprint": {"weights": "stat:2", "max_new_tokens": 16, "dtype": "bf16"}}
    assert differences(stored, wanted) == ["fingerprint.weights 'stat:1' (this run: 'stat:2')",
                                           "fingerprint.dtype <not recorded> (this run: 'bf16')",
                                           "fingerprint.old 1 (this run: <not recorded>)"]
    assert differences({"task": "t"}, {"task": "t", "fingerprint": {"a": 1}}) == [
        "fingerprint <not recorded> (a file from before fingerprints were recorded)"]


def test_read_predictions_refuses_an_unfingerprinted_file(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"task": "t", "id": "a", "prediction": "x"}) + "\n")
    with pytest.raises(PredictionsMismatchError, match="before fingerprints were recorded"):
        read_predictions(path, {"task": "t", "fingerprint": {"max_new_tokens": 4}})


def test_run_fingerprint_fields(tmp_path):
    model = _save(tmp_path / "model", seed=0)
    data = write_synthetic_benchmark(tmp_path / "data")
    fingerprint = run_fingerprint(model_dir=model, data=data, settings={"max_new_tokens": 4})
    assert set(fingerprint) == {"weights", "data", "max_new_tokens"}
    assert fingerprint["weights"].startswith("stat:")
    other_tokenizer = run_fingerprint(model_dir=model, data=data, tokenizer_dir=tiny_tokenizer_dir())
    assert other_tokenizer["tokenizer"].startswith("sha256:")
    with pytest.raises(ValueError, match="'stat' or 'content'"):
        run_fingerprint(model_dir=model, data=data, weights="mtime")


@pytest.fixture
def first_run(tmp_path):
    model = _save(tmp_path / "model", seed=0)
    data = write_synthetic_benchmark(tmp_path / "data")
    out = tmp_path / "out"
    args = [f"model={model}", f"data={data}", f"output_dir={out}", "task=synthetic", "max_new_tokens=4",
            "progress=false"]
    assert recipe.main(args) == 0
    return model, data, out, args


@pytest.mark.parametrize(("change", "field"), [
    (["max_new_tokens=5"], "fingerprint.max_new_tokens 4 (this run: 5)"),
    (["template=plain"], "fingerprint.template 'vicuna_v1' (this run: 'plain')"),
    (["dtype=bf16"], "fingerprint.dtype 'fp32' (this run: 'bf16')"),
    (["fingerprint_weights=content"], "fingerprint.weights 'stat:"),
    (["quantization=int8"], "fingerprint.quantization 'none' (this run: 'int8')"),
])
def test_changed_settings_are_refused_by_name(first_run, capsys, change, field):
    _, _, out, args = first_run
    before = (out / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert recipe.main([*args, *change]) == 2
    error = capsys.readouterr().err
    assert field in error and str(out / "predictions.jsonl") in error
    assert len(error.strip().splitlines()) == 1
    assert (out / "predictions.jsonl").read_text() == before


def test_model_replaced_at_the_same_path_is_refused(first_run, capsys):
    model, _, out, args = first_run
    _save(model, seed=1)  # other weights, same folder
    capsys.readouterr()
    assert recipe.main(args) == 2
    error = capsys.readouterr().err
    assert "fingerprint.weights" in error and "fingerprint.max_new_tokens" not in error


def test_data_file_changed_is_refused_and_same_run_resumes(first_run, capsys):
    _, data, out, args = first_run
    assert recipe.main(args) == 0  # nothing changed: reused
    assert "2 answers reused" in capsys.readouterr().err
    data.write_text(data.read_text().replace("How many red squares", "How many blue squares"))
    assert recipe.main(args) == 2
    assert "fingerprint.data 'sha256:" in capsys.readouterr().err


def test_each_line_records_the_fingerprint(first_run):
    model, _, out, _ = first_run
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    fingerprint = lines[0]["fingerprint"]
    assert all(line["fingerprint"] == fingerprint for line in lines)
    assert {"weights", "data", "max_new_tokens", "template", "dtype", "decoding", "split", "image_root"} <= set(
        fingerprint)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fingerprint"] == fingerprint


# ---------------------------------------------------------------------------------------------------- image content


def _record_images(data: Path) -> list[Path]:
    return [record["image_path"] for record in recipe.read_task("synthetic", data)]


def test_images_overwritten_under_the_same_names_are_refused(first_run, capsys):
    """Issue 32, defect 3: new images under the same names (same JSON) are a new run, never reused answers."""
    from factories.eval_data import write_image

    _, data, out, args = first_run
    before = (out / "predictions.jsonl").read_text()
    for index, path in enumerate(_record_images(data)):
        write_image(path, colour=(250, 10 * index, 30))
    capsys.readouterr()
    assert recipe.main(args) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "fingerprint.images 'sha256:" in error and "fingerprint.data" not in error
    assert (out / "predictions.jsonl").read_text() == before


def test_image_digests_are_computed_once_and_cached_by_size_and_mtime(first_run, monkeypatch, capsys):
    from rsfuse.eval import fingerprint

    _, data, out, args = first_run
    images = {str(path.resolve()) for path in _record_images(data)}
    hashed: list[str] = []
    original = fingerprint.file_digest

    def counting(path):
        hashed.append(str(path))
        return original(path)

    monkeypatch.setattr(fingerprint, "file_digest", counting)
    assert recipe.main(args) == 0  # unchanged: every image only stat'ed
    assert "2 answers reused" in capsys.readouterr().err
    assert not images & set(hashed)
    touched = sorted(images)[0]
    os.utime(touched, ns=(10**18, 10**18))  # a new mtime: read again, same content, still reused
    hashed.clear()
    assert recipe.main(args) == 0
    assert images & set(hashed) == {touched}
    assert "2 answers reused" in capsys.readouterr().err
