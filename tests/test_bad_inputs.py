"""Bad inputs through the public entry points (``rsfuse`` CLI, ``recipes/mf_rsvlm_train.py``, the Python API):
each case asserts the outcome a user sees — the exit status, one line naming the file / sample / key and the reason,
and that nothing is lost. The table of cases is docs/RELIABILITY.md."""

import math

import pytest

from rsfuse.recipes.config import SCHEMA, ConfigError, parse_args
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
        if field.type in (int, float) and key != "seed":
            assert field.bounds(), f"{key} declares no range"


def test_boundary_values_are_accepted():
    config = parse_args(["max_steps=0", "save_every=0", "keep_last=0", "train.warmup_ratio=0", "data.num_workers=0",
                         "train.batch_size=1", "train.grad_accum=1", "data.max_length=1", "train.max_grad_norm=0"])
    assert config["max_steps"] == 0 and config["train.warmup_ratio"] == 0.0
    assert math.isfinite(config["train.lr"])
