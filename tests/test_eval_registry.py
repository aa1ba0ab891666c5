"""Evaluation tasks as a registry of task objects: each built-in task reads, resolves protocols and scores; the recipe
works through the registry only, so a registered task is evaluated, configured and listed without recipe changes."""

import json

import pytest

from factories.eval_data import (
    write_karpathy_captions,
    write_rsvqa_lr_release,
    write_synthetic_benchmark,
    write_vrsbench,
)
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from rsfuse.eval import TASKS, EvalTask, get_task, register_task
from rsfuse.eval.tasks import registry
from rsfuse.recipes import evaluate as recipe
from rsfuse.recipes.config import ConfigError

BUILT_IN = {"vrsbench_vqa", "vrsbench_cap", "cls", "caption", "rsvqa_lr", "grounding", "synthetic"}


@pytest.fixture
def clean_registry():
    saved = dict(registry.TASKS)
    yield
    registry.TASKS.clear()
    registry.TASKS.update(saved)


def test_built_in_tasks_and_default_protocols():
    assert set(TASKS) >= BUILT_IN
    assert get_task("vrsbench_vqa").resolve_protocol() == "official"
    assert get_task("vrsbench_vqa").resolve_protocol("lenient") == "lenient"
    assert get_task("caption").resolve_protocol() in {"coco", "compat"}  # auto: coco when Java runs
    with pytest.raises(ValueError, match="no protocol 'lenient'"):
        get_task("cls").resolve_protocol("lenient")
    with pytest.raises(KeyError, match="unknown evaluation task 'vqa2'.*vrsbench_vqa"):
        get_task("vqa2")
    assert dict(recipe.TASK_PROTOCOLS)["vrsbench_cap"] == ("auto", "coco", "compat")


def test_task_read_applies_each_benchmark_default_layout(tmp_path):
    files = write_vrsbench(tmp_path / "vrs")  # images in Images_val/ beside the file
    records = get_task("vrsbench_vqa").read(files["vqa"])
    assert records[0]["image_path"].parent == files["images"]
    write_rsvqa_lr_release(tmp_path / "lr")
    assert {record["type"] for record in get_task("rsvqa_lr").read(tmp_path / "lr", split="test")} >= {"presence"}
    files = write_karpathy_captions(tmp_path / "ucm")
    records = get_task("caption").read(files["annotation"], files["images"], split="test")
    assert len(records) == 2 and recipe.read_task("caption", files["annotation"], files["images"]) == records


def test_task_score_dispatches_to_its_scorer(tmp_path):
    records = get_task("synthetic").read(write_synthetic_benchmark(tmp_path))
    result = get_task("synthetic").score([{**record, "prediction": record["answer"]} for record in records])
    assert result["protocol"].startswith("synthetic") and result["avg"]["exact_accuracy"] == 1.0
    caption_records = [{"id": "a", "answers": ["a harbour with ships"], "prediction": "a harbour with ships"}]
    result = get_task("vrsbench_cap").score(caption_records, "compat")
    assert result["protocol"] == "compat"


def test_register_refuses_a_taken_name(clean_registry):
    task = get_task("synthetic")
    with pytest.raises(ValueError, match="registered already"):
        register_task(task)
    with pytest.raises(ValueError, match="'auto' needs an auto_protocol"):
        EvalTask(name="x", summary="", protocols=("auto",), reader=task.reader, scorer=task.scorer)


def _count_scorer(records, protocol):
    answered = sum(bool(record["prediction"]) for record in records)
    return {"protocol": f"answered-{protocol}", "answered": answered, "total": len(records)}


def test_recipe_evaluates_a_registered_task(tmp_path, clean_registry, capsys):
    """A new benchmark is one register_task call: the recipe's config, reading, scoring and help all follow."""
    data = write_synthetic_benchmark(tmp_path / "data")
    synthetic = get_task("synthetic")
    register_task(EvalTask(name="answered", summary="how many questions get a non-empty answer",
                           protocols=("strict", "loose"), reader=synthetic.reader, scorer=_count_scorer))
    model_dir = tmp_path / "model"
    make_model(seed=1).save_pretrained(model_dir, tokenizer=tiny_tokenizer_dir())
    out = tmp_path / "out"
    assert recipe.main([f"model={model_dir}", "task=answered", "protocol=loose", f"data={data}", f"output_dir={out}",
                        "max_new_tokens=2", "progress=false"]) == 0
    result = json.loads((out / "metrics.json").read_text())["result"]
    assert result == {"protocol": "answered-loose", "answered": result["answered"], "total": 2}
    with pytest.raises(ConfigError, match="'medium' is not a protocol of task 'answered'"):
        recipe.load_eval_config(None, ["task=answered", "protocol=medium"])
    with pytest.raises(ConfigError, match="config key 'task': unknown evaluation task 'nope'"):
        recipe.load_eval_config(None, ["task=nope"])
    assert recipe.main(["--help"]) == 0
    assert "answered" in capsys.readouterr().out
    records = recipe.read_task("answered", data)
    assert recipe.evaluate(make_model(seed=1), tiny_tokenizer(), "answered", records, max_new_tokens=2)["total"] == 2
