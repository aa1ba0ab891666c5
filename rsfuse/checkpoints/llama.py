"""Reader for HF Llama / Vicuna folders (and the Llama part of LLaVA / MF-RSVLM folders): files → config + weights.

Layouts: ``model.safetensors``, sharded ``model-*.safetensors`` + ``model.safetensors.index.json``,
``pytorch_model.bin``, sharded ``pytorch_model-*.bin`` + ``pytorch_model.bin.index.json`` (pickles are read with
``weights_only=True``). Keys ending in ``rotary_emb.inv_freq`` (stored by old HF versions) are always dropped.
Pure functions: nothing here imports a model class.
"""

import os
import re
from pathlib import Path
from typing import Callable, Iterator

import torch

from rsfuse.checkpoints.io import CheckpointError, check_floating_tensors, iter_weight_shards, merge_shards, read_json
from rsfuse.llm.config import LlamaConfig

__all__ = [
    "LLAMA_KEY_PATTERN",
    "is_llama_key",
    "keep_llama_keys",
    "split_llama_state_dict",
    "read_llama_config",
    "iter_llama_shards",
    "read_llama",
]

LLAMA_KEY_PATTERN = re.compile(
    r"^(?:model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight"
    r"|model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj"
    r"|input_layernorm|post_attention_layernorm)\.(?:weight|bias))$"
)
_REQUIRED_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def is_llama_key(key: str) -> bool:
    """Whether ``key`` names a parameter of ``rsfuse.llm.LlamaForCausalLM`` (HF Llama naming)."""
    return LLAMA_KEY_PATTERN.match(key) is not None


def keep_llama_keys(key: str) -> str | None:
    """A ``rename`` hook that keeps Llama keys and drops everything else (``model.mm_projector.*``, vision tower...)."""
    return key if is_llama_key(key) else None


def split_llama_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(llama weights, extras)``: e.g. a LLaVA state dict → decoder weights and ``model.mm_projector.*`` & co."""
    llama = {key: value for key, value in state_dict.items() if is_llama_key(key)}
    extras = {key: value for key, value in state_dict.items() if not is_llama_key(key)}
    return llama, extras


def read_llama_config(folder: str | os.PathLike) -> LlamaConfig:
    """``LlamaConfig`` from ``folder/config.json`` (Llama, Vicuna, LLaVA-Llama and MF-RSVLM configs all work)."""
    path = Path(folder) / "config.json"
    data = read_json(path)
    missing = [name for name in _REQUIRED_CONFIG_FIELDS if name not in data]
    if missing:
        raise CheckpointError(f"{path}: not a Llama config, missing field(s) {missing}")
    try:
        return LlamaConfig.from_dict(data)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def _compose(rename: Callable[[str], str | None] | None) -> Callable[[str], str | None]:
    def renamed(key: str) -> str | None:
        if key.endswith("rotary_emb.inv_freq"):
            return None
        return key if rename is None else rename(key)

    return renamed


def iter_llama_shards(
    folder: str | os.PathLike, *, rename: Callable[[str], str | None] | None = None, check_finite: bool = True
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yield ``(shard path, state dict)`` one shard at a time (rotary buffers dropped, then ``rename`` applied:
    it returns the new key, or None to drop the entry). A key found in two shards and a decoder weight stored with
    an integer dtype are refused, naming the file and the key."""
    seen: set[str] = set()
    for path, shard in iter_weight_shards(folder, _compose(rename), check_finite=check_finite):
        duplicated = sorted(set(shard) & seen)
        if duplicated:
            raise CheckpointError(f"{path}: keys already read from an earlier shard: {duplicated[:5]}")
        check_floating_tensors({key: value for key, value in shard.items() if is_llama_key(key)}, source=path)
        seen.update(shard)
        yield path, shard
        shard = None  # nothing of this shard held while the next one is read


def read_llama(
    folder: str | os.PathLike, *, rename: Callable[[str], str | None] | None = None, check_finite: bool = True
) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """``(LlamaConfig, full state dict)`` of an HF Llama folder. For LLaVA-style folders pass
    ``rename=keep_llama_keys``, or read everything and ``split_llama_state_dict`` it. Use ``iter_llama_shards``
    to stream shards instead of holding them all. ``check_finite``: refuse NaN/inf tensors, naming file and key; a
    decoder weight stored with an integer dtype is refused likewise, and a wrongly typed config field by its key."""
    config = read_llama_config(folder)
    return config, merge_shards(iter_llama_shards(folder, rename=rename, check_finite=check_finite))
