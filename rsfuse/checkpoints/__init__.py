"""Checkpoint-layout readers and writers: pure functions from files to (config, state dict) and back.

Nothing in this package imports a model class, so the composed model can call these readers without import cycles.
"""

from rsfuse.checkpoints.io import (
    CheckpointError,
    find_weight_files,
    iter_weight_shards,
    load_weights_file,
    read_json,
    save_sharded,
)

__all__ = [
    "CheckpointError",
    "find_weight_files",
    "iter_weight_shards",
    "load_weights_file",
    "read_json",
    "save_sharded",
]
