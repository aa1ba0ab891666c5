"""Training machinery shared by the recipes: atomic checkpoints, RNG capture, FSDP2/DCP, metrics and optimisation."""

from rsfuse.train.checkpointing import (
    CheckpointSaveError,
    find_latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from rsfuse.train.lock import RunLock, RunLockedError
from rsfuse.train.metrics import MetricsWriter, plot_loss, read_metrics
from rsfuse.train.optim import build_optimizer, clip_and_step, cosine_with_warmup, warmup_steps_for
from rsfuse.train.rng import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "CheckpointSaveError",
    "MetricsWriter",
    "RunLock",
    "RunLockedError",
    "build_optimizer",
    "capture_rng_state",
    "clip_and_step",
    "cosine_with_warmup",
    "find_latest_checkpoint",
    "list_checkpoints",
    "plot_loss",
    "prune_checkpoints",
    "read_metrics",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "warmup_steps_for",
]
