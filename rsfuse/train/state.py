"""Training state: where a run stands (`TrainState`) and the files of a resumable step folder.

A single-process step folder holds ``model.safetensors``, ``optimizer.pt``, ``trainer_state.pt`` (step, epoch,
position in the epoch, global batch, scheduler), ``rng_rank<r>.pt`` per process and ``recipe.json``; under torchrun
the model and optimizer are a ``dcp/`` folder (torch.distributed.checkpoint). Folders are written atomically by
`rsfuse.train.checkpointing.save_checkpoint`; every file is read back with errors naming it.
"""

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsfuse.model.quantization import frozen_quantized_keys
from rsfuse.recipes.config import ConfigError
from rsfuse.train.distributed import load_sharded_state, save_sharded_state
from rsfuse.train.rng import capture_rng_state, restore_rng_state

__all__ = ["TrainState", "CheckpointReadError", "load_state_file", "write_step_files", "read_step_files",
           "MODEL_FILE", "OPTIMIZER_FILE", "TRAINER_STATE_FILE", "DCP_FOLDER"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.pt"
DCP_FOLDER = "dcp"


@dataclass
class TrainState:
    """Where training stands: optimizer steps done in total, current epoch, and steps done within it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


class CheckpointReadError(ValueError):
    """A file of a training checkpoint cannot be read (corrupt, truncated, not what it should be); names the file."""


def load_state_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    if not path.is_file():
        raise CheckpointReadError(f"{path}: missing")
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        if isinstance(error, pickle.UnpicklingError):
            reason = "corrupt, truncated or not a torch file (or it holds objects weights_only refuses)"
        else:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointReadError(f"{path}: unreadable ({type(error).__name__}: {reason})") from None


def write_step_files(trainer, folder: Path, *, rng_state: dict | None = None) -> None:
    """Write ``trainer``'s model, optimizer, scheduler, position and this rank's RNG into ``folder`` (every rank
    calls this; ``rng_state`` replaces the current RNG state)."""
    context = trainer.context
    if context.is_distributed:
        save_sharded_state(trainer.model, trainer.optimizer, folder / DCP_FOLDER)
    elif context.is_main:
        from safetensors.torch import save_file

        state = trainer.model.state_dict()
        frozen = frozen_quantized_keys(trainer.model, state)  # quantized base weights: re-read from the source
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if k not in frozen}
        save_file(state, str(folder / MODEL_FILE))
        torch.save(trainer.optimizer.state_dict(), folder / OPTIMIZER_FILE)
    torch.save(rng_state or capture_rng_state(), folder / f"rng_rank{context.rank}.pt")
    if context.is_main:
        trainer_state = {
            "step": trainer.state.step,
            "epoch": trainer.state.epoch,
            "step_in_epoch": trainer.state.step_in_epoch,
            "samples_consumed_in_epoch": trainer.state.step_in_epoch * trainer.global_batch,
            "global_batch": trainer.global_batch,
            "world_size": context.world_size,
            "scheduler": trainer.scheduler.state_dict(),
        }
        torch.save(trainer_state, folder / TRAINER_STATE_FILE)
        (folder / "recipe.json").write_text(json.dumps(trainer.snapshot, indent=2, default=str))


def read_step_files(trainer, folder: Path) -> None:
    """Restore ``trainer``'s model, optimizer, scheduler, data position and this rank's RNG from ``folder``. Every
    file of a single-process checkpoint is read before anything is changed; an unreadable one raises
    `CheckpointReadError` naming it (the run's state is then untouched)."""
    trainer_state = load_state_file(folder / TRAINER_STATE_FILE)
    if not isinstance(trainer_state, dict) or not {"global_batch", "step", "epoch", "step_in_epoch",
                                                    "scheduler"} <= set(trainer_state):
        raise CheckpointReadError(f"{folder / TRAINER_STATE_FILE}: not a trainer state (keys missing)")
    if trainer_state["global_batch"] != trainer.global_batch:
        raise ConfigError(
            f"{folder}: checkpoint was written with a global batch of {trainer_state['global_batch']} samples, "
            f"this run uses {trainer.global_batch}; resuming exactly needs the same batch_size × grad_accum × processes"
        )
    rng_file = folder / f"rng_rank{trainer.context.rank}.pt"
    if not rng_file.is_file():
        raise ConfigError(f"{rng_file}: missing (the checkpoint was written by fewer processes)")
    rng_state = load_state_file(rng_file)
    if not isinstance(rng_state, dict) or not {"python", "numpy", "torch_cpu"} <= set(rng_state):
        raise CheckpointReadError(f"{rng_file}: not an RNG state (entries python, numpy, torch_cpu expected)")
    if trainer.context.is_distributed:
        if not (folder / DCP_FOLDER).is_dir():
            raise ConfigError(f"{folder}: no {DCP_FOLDER}/ (written by a single process; resume it with one)")
        load_sharded_state(trainer.model, trainer.optimizer, folder / DCP_FOLDER)
    else:
        if not (folder / MODEL_FILE).is_file():
            raise ConfigError(f"{folder}: no {MODEL_FILE} (written under torchrun; resume it with torchrun)")
        from safetensors.torch import load_file

        try:
            state = load_file(str(folder / MODEL_FILE))
        except Exception as error:  # SafetensorError, OSError
            raise CheckpointReadError(f"{folder / MODEL_FILE}: unreadable ({type(error).__name__}: "
                                      f"{str(error)[:200]})") from None
        optimizer_state = load_state_file(folder / OPTIMIZER_FILE)
        current = trainer.model.state_dict()
        resized = [f"{key} {tuple(value.shape)} (the model: {tuple(current[key].shape)})"
                   for key, value in state.items() if key in current and value.shape != current[key].shape]
        if resized:
            raise ConfigError(
                f"{folder / MODEL_FILE}: written for a model of another size ({len(resized)} weights differ, e.g. "
                f"{resized[0]}); resume it with the model settings it was trained with, or use a new output_dir"
            )
        missing, unexpected = trainer.model.load_state_dict(state, strict=False)
        missing = sorted(set(missing) - frozen_quantized_keys(trainer.model, missing))
        if missing or unexpected:
            raise ConfigError(
                f"{folder / MODEL_FILE}: does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        try:
            trainer.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointReadError(f"{folder / OPTIMIZER_FILE}: does not match the optimizer ({error})") from None
    trainer.scheduler.load_state_dict(trainer_state["scheduler"])
    trainer.state = TrainState(
        step=trainer_state["step"], epoch=trainer_state["epoch"], step_in_epoch=trainer_state["step_in_epoch"]
    )
    try:
        restore_rng_state(rng_state)
    except Exception as error:
        raise CheckpointReadError(f"{rng_file}: not an RNG state ({type(error).__name__}: {error})") from None
