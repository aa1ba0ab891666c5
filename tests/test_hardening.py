"""Issue 32 (hardening), outside the server: training and console-script cases through the public entry points
(the recipe's ``main(argv)``, ``rsfuse.cli.main``). The table of cases is docs/RELIABILITY.md."""

import json
from pathlib import Path

import pytest
import yaml

from factories.console import one_line
from factories.train_run import recipe_args, tiny_data
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
