"""The evaluation recipe end to end on a micro model and tiny fixtures of each task format: outputs, protocols,
resume of an interrupted run without regenerating, refusal of a predictions file from another run."""

import json
from pathlib import Path

import pytest

from factories.eval_data import (
    write_class_folders,
    write_grounding_files,
    write_karpathy_captions,
    write_rsvqa_lr_release,
    write_synthetic_benchmark,
    write_vrsbench,
)
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from rsfuse.model import MFRSVLM
from rsfuse.recipes import evaluate as recipe
from rsfuse.recipes.config import ConfigError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "micro"
    make_model(seed=3).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


def _predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def _run(model_dir: Path, out: Path, *args: str) -> int:
    return recipe.main([f"model={model_dir}", f"output_dir={out}", "max_new_tokens=4", "batch_size=2",
                        "progress=false", *args])


@pytest.mark.slow
def test_synthetic_end_to_end(model_dir, tmp_path, capsys):
    data = write_synthetic_benchmark(tmp_path / "synth")
    out = tmp_path / "out"
    assert _run(model_dir, out, "task=synthetic", f"data={data}") == 0
    predictions = _predictions(out)
    assert sorted(p["id"] for p in predictions) == ["s0", "s1"]
    assert all(p["task"] == "synthetic" and p["model"] == str(model_dir.resolve()) for p in predictions)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "synthetic" and metrics["samples"] == 2
    result = metrics["result"]
    assert result["protocol"].startswith("synthetic")
    assert set(result["per_type"]) == {"count", "color"}
    assert set(result["by_object_size"]) == {"small", "large"}
    table = (out / "metrics.md").read_text()
    assert "| metric | value | protocol |" in table and "per_type / count / exact_accuracy" in table
    assert table in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["official", "lenient"])
def test_vrsbench_vqa_protocols(model_dir, tmp_path, protocol):
    files = write_vrsbench(tmp_path / "vrs")
    out = tmp_path / "out"
    assert _run(model_dir, out, "task=vrsbench_vqa", f"data={files['vqa']}", f"protocol={protocol}") == 0
    result = json.loads((out / "metrics.json").read_text())["result"]
    assert result["protocol"].startswith(f"vrsbench-{protocol}")
    assert result["total"] == 3
    assert set(result["per_type"]) == {"object quantity", "object existence", "object color"}


@pytest.mark.slow
def test_classification_folders_and_caption(model_dir, tmp_path):
    counts = write_class_folders(tmp_path / "aid")
    out = tmp_path / "cls"
    assert _run(model_dir, out, "task=cls", f"data={tmp_path / 'aid'}") == 0
    result = json.loads((out / "metrics.json").read_text())["result"]
    assert result["total"] == sum(counts.values())
    assert result["protocol"].startswith("classification")
    assert 0.0 <= result["contains_accuracy"] <= 1.0

    files = write_karpathy_captions(tmp_path / "ucm")
    out = tmp_path / "cap"
    assert _run(model_dir, out, "task=caption", f"data={files['annotation']}", f"image_root={files['images']}",
                "protocol=compat") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples"] == 2  # the test split only
    assert metrics["result"]["protocol"] == "compat" and "CIDEr" in metrics["result"]


@pytest.mark.slow
def test_rsvqa_and_grounding_through_evaluate(model_dir, tmp_path):
    model = MFRSVLM.from_pretrained(model_dir)
    tokenizer = tiny_tokenizer()
    write_rsvqa_lr_release(tmp_path / "lr")
    records = recipe.read_task("rsvqa_lr", tmp_path / "lr")
    result = recipe.evaluate(model, tokenizer, "rsvqa_lr", records, max_new_tokens=3, batch_size=4)
    assert result["protocol"].startswith("rsvqa-lr") and result["skipped"] == 1  # the count question
    files = write_grounding_files(tmp_path / "vg")
    records = recipe.read_task("grounding", files["generic"])
    result = recipe.evaluate(model, tokenizer, "grounding", records, max_new_tokens=3)
    assert result["total"] == 1 and "mIoU" in result


@pytest.mark.slow
def test_resume_generates_only_missing_ids(model_dir, tmp_path, monkeypatch):
    files = write_vrsbench(tmp_path / "vrs")
    out = tmp_path / "out"
    args = ("task=vrsbench_vqa", f"data={files['vqa']}", "batch_size=1")
    assert _run(model_dir, out, *args) == 0
    full = json.loads((out / "metrics.json").read_text())
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # An interrupted run: one whole line kept, the next torn mid-write; metrics never written.
    (out / "predictions.jsonl").write_text(lines[0] + lines[1][:10])
    (out / "metrics.json").unlink()

    generated_rows = []
    original = MFRSVLM.generate

    def counting_generate(self, pixel_values, input_ids, *rest, **kwargs):
        generated_rows.append(input_ids.shape[0])
        return original(self, pixel_values, input_ids, *rest, **kwargs)

    monkeypatch.setattr(MFRSVLM, "generate", counting_generate)
    assert _run(model_dir, out, *args) == 0
    assert sum(generated_rows) == 2  # only the two missing questions
    ids = [p["id"] for p in _predictions(out)]
    assert sorted(ids) == ["0", "1", "2"] and len(ids) == len(set(ids))
    assert json.loads((out / "metrics.json").read_text()) == full

    generated_rows.clear()
    assert _run(model_dir, out, *args) == 0  # complete file: nothing to generate
    assert generated_rows == []


def test_mismatched_predictions_file_is_refused(model_dir, tmp_path, capsys):
    data = write_synthetic_benchmark(tmp_path / "synth")
    out = tmp_path / "out"
    out.mkdir()
    line = {"task": "vrsbench_vqa", "model": str(model_dir.resolve()), "data": str(data.resolve()),
            "id": "s0", "prediction": "3"}
    (out / "predictions.jsonl").write_text(json.dumps(line) + "\n")
    assert _run(model_dir, out, "task=synthetic", f"data={data}") == recipe.EXIT_MISMATCH
    error = capsys.readouterr().err
    assert "predictions.jsonl" in error and "task 'vrsbench_vqa'" in error
    assert not (out / "metrics.json").exists()

    line.update(task="synthetic", model="/elsewhere/other_model")
    (out / "predictions.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(recipe.PredictionsMismatchError, match="other_model"):
        recipe.run(recipe.load_eval_config(None, [f"model={model_dir}", f"output_dir={out}", "task=synthetic",
                                                  f"data={data}", "progress=false"]))


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown eval config key 'batchsize'.*batch_size"):
        recipe.load_eval_config(None, ["batchsize=2"])
    with pytest.raises(ConfigError, match="'lenient' is not a protocol of task 'cls'"):
        recipe.load_eval_config(None, ["task=cls", "protocol=lenient"])
    with pytest.raises(ConfigError, match="expected an integer"):
        recipe.load_eval_config(None, ["limit=many"])
    config_file = tmp_path / "eval.yaml"
    config_file.write_text("task: vrsbench_vqa\nprotocol: lenient\nbatch_size: 3\n")
    config = recipe.load_eval_config(config_file, ["batch_size=5"])
    assert (config["task"], config["protocol"], config["batch_size"]) == ("vrsbench_vqa", "lenient", 5)
    assert recipe.main(["task=synthetic", f"output_dir={tmp_path}"]) == recipe.EXIT_CONFIG  # no model


def test_shipped_eval_configs_load():
    folder = Path(__file__).resolve().parents[1] / "recipes" / "configs"
    files = sorted(folder.glob("eval_*.yaml"))
    tasks = {recipe.load_eval_config(path)["task"] for path in files}
    assert {"synthetic", "vrsbench_vqa", "cls", "caption"} <= tasks


def test_duplicate_ids_are_refused(model_dir):
    records = [{"id": "a", "prompt": "q", "image_path": Path("x.png"), "answer": "1", "type": "t"}] * 2
    with pytest.raises(ValueError, match="id 'a' appears twice"):
        recipe.evaluate(make_model(seed=0), tiny_tokenizer(), "cls", records)


def _expected_answers(model_dir: Path, records, *, max_new_tokens: int, blank: bool = False) -> dict[str, str]:
    """Each record answered alone: ``model.generate`` on its image (LLaVA preprocessing) and its vicuna_v1 prompt,
    greedy, cut at EOS and decoded. ``blank`` feeds all-zero pixels instead of the image."""
    import torch

    from rsfuse.data import ImageProcessor
    from rsfuse.llm.templates import build_prompt, tokenize_prompt

    model = MFRSVLM.from_pretrained(model_dir)
    tokenizer = tiny_tokenizer()
    processor = ImageProcessor(model.config.input_size)
    answers = {}
    for record in records:
        pixels = processor(Path(record["image_path"]))[None]
        if blank:
            pixels = torch.zeros_like(pixels)
        ids = torch.tensor([tokenize_prompt(build_prompt("vicuna_v1", str(record["prompt"])), tokenizer)])
        tokens = model.generate(pixels, ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id)[0].tolist()
        if tokenizer.eos_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_id)]
        answers[str(record["id"])] = tokenizer.decode(tokens).strip()
    return answers


@pytest.mark.parametrize("task", ["vrsbench_vqa", "cls"])
def test_predictions_are_the_models_answers_on_the_real_images(model_dir, tmp_path, task):
    if task == "vrsbench_vqa":
        data = write_vrsbench(tmp_path / "vrs")["vqa"]
    else:
        write_class_folders(tmp_path / "aid")
        data = tmp_path / "aid"
    out = tmp_path / "out"
    assert _run(model_dir, out, f"task={task}", f"data={data}") == 0
    predicted = {str(p["id"]): p["prediction"] for p in _predictions(out)}
    records = recipe.read_task(task, data)
    expected = _expected_answers(model_dir, records, max_new_tokens=4)
    assert predicted == expected
    # The answers depend on the pixels: all-zero images would give other predictions.
    assert _expected_answers(model_dir, records, max_new_tokens=4, blank=True) != expected
