"""Atomic checkpoints, RNG capture, optimiser pieces and the loop's exact resume on a stand-in module."""

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rsfuse.train.loop import LoopOptions, Trainer
from rsfuse.train.order import epoch_order, micro_batches_for_step
from rsfuse.train.checkpointing import find_latest_checkpoint, list_checkpoints, save_checkpoint
from rsfuse.train.metrics import read_metrics
from rsfuse.train.optim import build_optimizer, cosine_with_warmup, warmup_steps_for
from rsfuse.train.rng import capture_rng_state, restore_rng_state, seed_everything


def _write_file(name: str, text: str):
    def write(folder: Path) -> None:
        (folder / name).write_text(text)

    return write


def test_atomic_save_keeps_last_and_ignores_partial(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, _write_file("payload.txt", f"step {step}"), keep_last=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_2", "step_3"]
    # A save killed after writing files but before sealing leaves a temp folder: ignored, then cleaned up.
    partial = root / ".tmp-step_4"
    partial.mkdir()
    (partial / "payload.txt").write_text("half")
    # An unsealed step folder (no COMPLETE marker) is not a checkpoint either.
    (root / "step_9").mkdir()
    latest = find_latest_checkpoint(root)
    assert latest.name == "step_3" and (latest / "payload.txt").read_text() == "step 3"
    save_checkpoint(root, 4, _write_file("payload.txt", "step 4"), keep_last=2)
    assert not partial.exists()
    assert find_latest_checkpoint(root).name == "step_4"
    assert (root / "step_4" / "payload.txt").read_text() == "step 4"


def test_stale_temporary_folders_of_killed_saves_are_ignored_then_removed(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 3, _write_file("payload.txt", "step 3"))
    # Killed after sealing but before the rename: a complete-looking temporary folder of a later step.
    sealed = root / ".tmp-step_7"
    sealed.mkdir()
    (sealed / "payload.txt").write_text("never renamed")
    (sealed / "COMPLETE").write_text("step 7\n")
    # Killed mid-write during an earlier attempt at the very step saved next, with a file the new save does not write.
    same_step = root / ".tmp-step_5"
    same_step.mkdir()
    (same_step / "leftover.bin").write_bytes(b"\0" * 16)
    assert [p.name for p in list_checkpoints(root)] == ["step_3"]
    assert find_latest_checkpoint(root) == root / "step_3"
    final = save_checkpoint(root, 5, _write_file("payload.txt", "step 5"))
    assert final == root / "step_5"
    assert sorted(p.name for p in root.iterdir()) == ["step_3", "step_5"]  # both stale folders are gone
    assert sorted(p.name for p in final.iterdir()) == ["COMPLETE", "payload.txt"]  # nothing leaked from the old try
    assert (final / "payload.txt").read_text() == "step 5"
    assert [p.name for p in list_checkpoints(root)] == ["step_3", "step_5"]


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, _write_file("payload.txt", "good"))

    def broken(folder: Path) -> None:
        (folder / "payload.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(root, 2, broken)
    assert find_latest_checkpoint(root).name == "step_1"


def test_rng_round_trip_through_weights_only_file(tmp_path):
    seed_everything(11)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3), nn.functional.dropout(torch.ones(8), 0.5))
    random.random(), np.random.rand(), torch.rand(5)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3), nn.functional.dropout(torch.ones(8), 0.5))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_schedule_warmup_then_cosine_and_tower_lr():
    model = nn.ModuleDict({"vision_tower": nn.Linear(2, 2), "llm": nn.Linear(2, 2)})
    optimizer = build_optimizer(
        model.named_parameters(), lr=1.0, weight_decay=0.1, tower_lr=0.5, is_tower=lambda n: n.startswith("vision")
    )
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["tower.decay"]["lr"] == 0.5 and groups["rest.no_decay"]["weight_decay"] == 0.0
    assert warmup_steps_for(100, 0.03) == 3
    scheduler = cosine_with_warmup(optimizer, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(groups["rest.decay"]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3) and lrs[2] == pytest.approx(1.0)
    assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([("w", nn.Parameter(torch.ones(1), requires_grad=False))], lr=1.0, weight_decay=0.0)


def test_data_order_and_sharding_reproduce_the_global_batch():
    order = epoch_order(20, seed=3, epoch=1)
    assert order == epoch_order(20, seed=3, epoch=1) and order != epoch_order(20, seed=3, epoch=2)
    single = micro_batches_for_step(order, 1, batch_size=4, grad_accum=2, world_size=1, rank=0)
    shards = [micro_batches_for_step(order, 1, batch_size=2, grad_accum=2, world_size=2, rank=r) for r in (0, 1)]
    for micro in range(2):
        assert sorted(single[micro]) == sorted(shards[0][micro] + shards[1][micro])


class _StandIn(nn.Module):
    """Embedding → dropout → linear head; HF-style loss (shifted, −100 ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 12)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(12, 16)

    def forward(self, input_ids, labels):
        logits = self.head(self.dropout(self.embed(input_ids)))
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)


def _stand_in_run(output_dir: Path, steps: int, *, resume: bool) -> dict:
    seed_everything(0)
    model = _StandIn()
    data = torch.randint(0, 16, (30, 5), generator=torch.Generator().manual_seed(1))
    optimizer = build_optimizer(model.named_parameters(), lr=0.05, weight_decay=0.01)
    scheduler = cosine_with_warmup(optimizer, total_steps=12, warmup_steps=2)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_dataset=list(data),
        collate=lambda rows: {"input_ids": torch.stack(rows), "labels": torch.stack(rows)},
        options=LoopOptions(output_dir=output_dir, total_steps=steps, batch_size=4, grad_accum=2, save_every=3,
                            val_every=4, progress=False),
        val_dataset=list(data[:8]),
    )
    latest = find_latest_checkpoint(output_dir / "checkpoints")
    if resume and latest is not None:
        trainer.load_checkpoint(latest)
    trainer.run(resume_step=trainer.state.step if resume and latest is not None else None)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_stand_in_resume_is_bit_identical(tmp_path):
    """Dropout, two epochs (3 steps each), grad accumulation: 12 steps straight = 5 steps, stop, resume to 12."""
    straight = _stand_in_run(tmp_path / "a", 12, resume=False)
    _stand_in_run(tmp_path / "b", 5, resume=False)  # stops after step 5; newest checkpoint: step_5 (final save)
    resumed = _stand_in_run(tmp_path / "b", 12, resume=True)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    losses = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    assert len(losses) == 12


def test_length_grouped_order_is_a_permutation_fixed_by_seed_and_epoch(tmp_path):
    lengths = [3, 9, 1, 7, 5, 2, 8, 4]
    data = [torch.zeros(length, dtype=torch.long) for length in lengths]
    trainer = Trainer(
        model=_StandIn(), optimizer=build_optimizer(_StandIn().named_parameters(), lr=0.1, weight_decay=0.0),
        scheduler=None, train_dataset=data, collate=lambda rows: rows,
        options=LoopOptions(output_dir=tmp_path, batch_size=4, progress=False), lengths=lengths,
    )
    order = trainer.epoch_order(0)
    assert sorted(order) == list(range(8)) and order == trainer.epoch_order(0)
    for start in (0, 4):  # each batch is sorted longest first
        batch = [lengths[i] for i in order[start : start + 4]]
        assert batch == sorted(batch, reverse=True)


class _NoDropout(_StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Identity()


def _accumulation_run(output_dir: Path, *, batch_size: int, grad_accum: int) -> tuple[list[float], dict]:
    """Two optimizer steps over four samples with 7, 1, 4 and 2 supervised tokens (padded to one length)."""
    seed_everything(0)
    model = _NoDropout()
    ids = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(3))
    supervised = [7, 1, 4, 2]
    rows = []
    for row, count in zip(ids, supervised):
        labels = torch.full_like(row, -100)
        labels[8 - count:] = row[8 - count:]  # the last `count` tokens are answers (shifted targets: count)
        rows.append((row, labels))
    optimizer = build_optimizer(model.named_parameters(), lr=0.05, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, total_steps=2, warmup_steps=0)
    trainer = Trainer(
        model=model, optimizer=optimizer, scheduler=scheduler, train_dataset=rows,
        collate=lambda batch: {"input_ids": torch.stack([r for r, _ in batch]),
                               "labels": torch.stack([labels for _, labels in batch])},
        options=LoopOptions(output_dir=output_dir, total_steps=2, batch_size=batch_size, grad_accum=grad_accum,
                            max_grad_norm=0.0, progress=False),
    )
    order = trainer.epoch_order(0)
    steps = [micro_batches_for_step(order, step, batch_size=batch_size, grad_accum=grad_accum, world_size=1, rank=0)
             for step in range(2)]
    counts = [[supervised[index] for micro in step for index in micro] for step in steps]
    assert any(len(set(step)) > 1 for step in counts)  # the micro-batches of a step are unequal
    trainer.run()
    losses = [record["loss"] for record in read_metrics(output_dir / "metrics.jsonl")]
    return losses, {key: value.clone() for key, value in model.state_dict().items()}


def test_grad_accum_with_unequal_micro_batches_equals_one_batch_holding_both(tmp_path):
    """Issue 32: a grad_accum=2 step over micro-batches with different numbers of supervised tokens gives the loss
    and the weights of one batch holding both (each micro-batch weighted by its share of the step's tokens)."""
    whole_losses, whole = _accumulation_run(tmp_path / "whole", batch_size=2, grad_accum=1)
    split_losses, split = _accumulation_run(tmp_path / "split", batch_size=1, grad_accum=2)
    assert len(whole_losses) == 2
    for expected, got in zip(whole_losses, split_losses):
        assert abs(expected - got) < 1e-6, (whole_losses, split_losses)
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=1e-5, atol=1e-6)
