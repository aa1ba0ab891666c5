"""Reader for LLaVA-1.5 folders (``liuhaotian/llava-v1.5-7b``): the decoder and the ``mm_projector``.

Keys: the Llama keys plus ``model.mm_projector.{0,2}.{weight,bias}``; ``config.json`` has ``mm_vision_tower``,
``mm_vision_select_layer`` (−2 for LLaVA-1.5) and ``mm_projector_type`` ("mlp2x_gelu"). Vision-tower keys, if a
folder stores them, are dropped (the tower comes from its own CLIP folder). Pure functions: no model class here.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from rsfuse.checkpoints.io import CheckpointError, iter_weight_shards, read_json
from rsfuse.checkpoints.llama import is_llama_key, read_llama_config
from rsfuse.llm.config import LlamaConfig

__all__ = ["LlavaParts", "read_llava"]

_PROJECTOR_KEY = re.compile(r"^model\.mm_projector\.([02])\.(weight|bias)$")
_TOWER_PREFIX = "model.vision_tower."


@dataclass
class LlavaParts:
    """A LLaVA folder's decoder config and weights (HF Llama keys), projector weights (``0.*``, ``2.*``) and the
    vision settings recorded in its config."""

    llm_config: LlamaConfig
    llm_state_dict: dict[str, torch.Tensor]
    projector_state_dict: dict[str, torch.Tensor]
    vision_select_layer: int
    vision_tower_name: str | None


def read_llava(folder: str | os.PathLike) -> LlavaParts:
    """Read a LLaVA-1.5 folder; raises ``CheckpointError`` listing keys that are neither Llama nor projector keys."""
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path)
    projector_type = data.get("mm_projector_type", "mlp2x_gelu")
    if projector_type != "mlp2x_gelu":
        raise CheckpointError(f"{config_path}: mm_projector_type {projector_type!r} is not supported (only 'mlp2x_gelu')")
    select = data.get("mm_vision_select_layer", -2)
    if isinstance(select, list):
        if len(select) != 1:
            raise CheckpointError(f"{config_path}: mm_vision_select_layer {select} selects several layers")
        select = select[0]
    if isinstance(select, bool) or not isinstance(select, int):
        raise CheckpointError(f"{config_path}: mm_vision_select_layer must be an int, got {select!r}")
    llm_config = read_llama_config(folder)
    llm_state: dict[str, torch.Tensor] = {}
    projector: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path, shard in iter_weight_shards(folder):
        for key, tensor in shard.items():
            match = _PROJECTOR_KEY.match(key)
            if is_llama_key(key):
                llm_state[key] = tensor
            elif match:
                projector[f"{match.group(1)}.{match.group(2)}"] = tensor
            elif key.startswith(_TOWER_PREFIX) or key.endswith("rotary_emb.inv_freq"):
                continue
            else:
                unexpected.append(f"{key} ({path.name})")
    if unexpected:
        raise CheckpointError(f"{folder}: keys not part of the LLaVA-1.5 layout: {unexpected}")
    missing = sorted({"0.weight", "0.bias", "2.weight", "2.bias"} - set(projector))
    if missing:
        raise CheckpointError(f"{folder}: LLaVA folder lacks projector keys {['model.mm_projector.' + k for k in missing]}")
    tower_name = data.get("mm_vision_tower")
    return LlavaParts(
        llm_config=llm_config,
        llm_state_dict=llm_state,
        projector_state_dict=projector,
        vision_select_layer=select,
        vision_tower_name=tower_name if isinstance(tower_name, str) else None,
    )
