"""Checkpoint-layout readers and writers: pure functions from files to (config, state dict) and back.

Nothing in this package imports a model class, so the composed model can call these readers without import cycles.
``formats`` is the one registry of the folder layouts ``MFRSVLM.from_pretrained`` and ``MFRSVLMProcessor`` read
(``config.json``'s ``model_type`` → reader).
"""

from rsfuse.checkpoints.clip import (
    clip_vision_shapes,
    openai_to_hf_vision,
    read_clip_vision,
    read_clip_vision_config,
    save_clip_vision,
)
from rsfuse.checkpoints.formats import FORMATS, CheckpointFormat, checkpoint_format, read_model_config
from rsfuse.checkpoints.io import (
    CheckpointError,
    check_finite_tensors,
    check_floating_tensors,
    find_weight_files,
    iter_weight_shards,
    load_weights_file,
    read_json,
    save_sharded,
)
from rsfuse.checkpoints.llama import (
    is_llama_key,
    iter_llama_shards,
    keep_llama_keys,
    read_llama,
    read_llama_config,
    split_llama_state_dict,
)
from rsfuse.checkpoints.llava import LlavaParts, read_llava
from rsfuse.checkpoints.llava_hf import is_llava_hf_config, read_llava_hf, read_llava_hf_config
from rsfuse.checkpoints.mfrsvlm import iter_released_mfrsvlm, read_released_mfrsvlm
from rsfuse.checkpoints.rsfuse_folder import checkpoint_model_type, iter_rsfuse_folder, read_rsfuse_folder, write_rsfuse_folder

__all__ = [
    "CheckpointFormat",
    "FORMATS",
    "checkpoint_format",
    "read_model_config",
    "CheckpointError",
    "check_finite_tensors",
    "check_floating_tensors",
    "clip_vision_shapes",
    "openai_to_hf_vision",
    "read_clip_vision",
    "read_clip_vision_config",
    "save_clip_vision",
    "find_weight_files",
    "iter_weight_shards",
    "load_weights_file",
    "read_json",
    "save_sharded",
    "is_llama_key",
    "iter_llama_shards",
    "keep_llama_keys",
    "read_llama",
    "read_llama_config",
    "split_llama_state_dict",
    "LlavaParts",
    "read_llava",
    "is_llava_hf_config",
    "read_llava_hf",
    "read_llava_hf_config",
    "read_released_mfrsvlm",
    "iter_released_mfrsvlm",
    "checkpoint_model_type",
    "read_rsfuse_folder",
    "iter_rsfuse_folder",
    "write_rsfuse_folder",
]
