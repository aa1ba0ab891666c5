"""End-to-end recipe runs in subprocesses: SIGKILL mid-run and mid-save then resume gives bit-identical weights;
a non-finite loss exits non-zero naming the step; LoRA is merged into final/."""

import signal
import time
from pathlib import Path

import pytest
import torch
from factories.train_run import child_env, recipe_args, run_recipe, start_recipe, tiny_data
from safetensors.torch import load_file

from rsfuse.checkpoints.io import iter_weight_shards
from rsfuse.train.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    result = run_recipe(recipe_args(output, data))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def _final_weights(output: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for _, shard in iter_weight_shards(output / "final"):
        weights.update(shard)
    return weights


def _assert_same_run(reference: Path, other: Path) -> None:
    expected, got = _final_weights(reference), _final_weights(other)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after resume"
    steps = [(r["step"], r["loss"]) for r in read_metrics(other / "metrics.jsonl")]
    assert steps == [(r["step"], r["loss"]) for r in read_metrics(reference / "metrics.jsonl")]


def _wait_for(predicate, process, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("kill point never reached")


def _kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_sigkill_mid_run_then_resume_is_bit_identical(data, reference, tmp_path):
    output = tmp_path / "killed"
    process = start_recipe(recipe_args(output, data))
    metrics = output / "metrics.jsonl"
    # Kill after step 3 was logged: checkpoint step_2 is complete, step 3's update is lost.
    _wait_for(lambda: any(r.get("step") == 3 for r in read_metrics(metrics)), process)
    _kill(process)
    assert not (output / "final").exists()
    resumed = run_recipe(recipe_args(output, data, "resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step_2" in resumed.stderr
    _assert_same_run(reference, output)


def test_sigkill_during_checkpoint_save_then_resume_is_bit_identical(data, reference, tmp_path):
    output = tmp_path / "killed_saving"
    env = child_env(RSFUSE_CHECKPOINT_SAVE_DELAY="4:60")  # the save of step 4 sleeps after writing, before sealing
    process = start_recipe(recipe_args(output, data), env=env)
    partial = output / "checkpoints" / ".tmp-step_4"
    _wait_for(lambda: (partial / "trainer_state.pt").is_file(), process)
    _kill(process)
    assert partial.is_dir() and not (output / "checkpoints" / "step_4").exists()
    resumed = run_recipe(recipe_args(output, data))  # resume=auto is the default
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_2" in resumed.stderr
    assert not partial.exists()
    _assert_same_run(reference, output)


def test_checkpoint_holds_every_piece(reference):
    step = reference / "checkpoints" / "step_6"
    names = {p.name for p in step.iterdir()}
    assert {"COMPLETE", "model.safetensors", "optimizer.pt", "trainer_state.pt", "rng_rank0.pt"} <= names
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6 and "scheduler" in state and state["global_batch"] == 4
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step_4", "step_6"]  # keep_last=2
    records = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in records) and "val_loss" in records[2]


def test_non_finite_loss_stops_naming_the_step(data, tmp_path):
    output = tmp_path / "diverged"
    result = run_recipe(recipe_args(output, data, "train.lr=1e30", "train.max_grad_norm=0", "save_every=1"))
    assert result.returncode == 3
    assert "non-finite loss" in result.stderr
    step = int(result.stderr.split("at step ")[1].split(";")[0])
    assert step >= 2
    assert f"step_{step - 1}" in result.stderr  # the last good checkpoint, kept
    assert (output / "checkpoints" / f"step_{step - 1}" / "COMPLETE").is_file()
    assert not (output / "final").exists()


def test_lora_is_merged_into_final(data, tmp_path):
    from rsfuse.model import MFRSVLM

    output = tmp_path / "lora"
    args = recipe_args(
        output, data, "max_steps=2", "train.trainable.llm=lora", "train.trainable.vit=frozen",
        "train.trainable.injector=full", "train.trainable.projector=full", "train.lora.r=4", "train.lora.alpha=8",
        "train.lr=2e-2",
    )
    result = run_recipe(args)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_file(str(output / "checkpoints" / "step_2" / "model.safetensors"))
    final = _final_weights(output)
    assert not any("lora" in key or "base_layer" in key for key in final)
    prefix = "llm.model.layers.0.self_attn.q_proj"
    base = checkpoint[f"{prefix}.base_layer.weight"]
    delta = checkpoint[f"{prefix}.lora_B.default.weight"] @ checkpoint[f"{prefix}.lora_A.default.weight"] * (8 / 4)
    assert delta.abs().max() > 0
    torch.testing.assert_close(final[f"{prefix}.weight"], base + delta, rtol=1e-5, atol=1e-6)
    model = MFRSVLM.from_pretrained(output / "final")
    assert (output / "final" / "tokenizer.model").is_file()
    assert torch.equal(model.state_dict()[f"{prefix}.weight"], final[f"{prefix}.weight"])
