"""Reader for LLaVA-1.5 folders in both layouts; ``read_llava`` picks the layout from ``config.json``.

* liuhaotian (``liuhaotian/llava-v1.5-7b``): the Llama keys plus ``model.mm_projector.{0,2}.{weight,bias}``;
  ``config.json`` has ``mm_vision_tower``, ``mm_vision_select_layer`` (−2 for LLaVA-1.5) and ``mm_projector_type``
  ("mlp2x_gelu"). Vision-tower keys, if a folder stores them, are dropped (the tower comes from its own CLIP folder).
* transformers / llava-hf (``llava-hf/llava-1.5-7b-hf``, ``LlavaForConditionalGeneration.save_pretrained``): nested
  ``text_config`` / ``vision_config``; the tower is in the folder and an in-vocabulary image token is used
  (see ``rsfuse.checkpoints.llava_hf``).

Pure functions: no model class here.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsfuse.checkpoints.io import CheckpointError, check_floating_tensors, iter_weight_shards, read_json
from rsfuse.checkpoints.llama import is_llama_key, read_llama_config
from rsfuse.checkpoints.llava_hf import is_llava_hf_config, read_llava_hf
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.llm.config import LlamaConfig

__all__ = ["LlavaParts", "read_llava", "llava_settings", "LIUHAOTIAN_LAYOUT", "LLAVA_HF_LAYOUT"]

LIUHAOTIAN_LAYOUT = "liuhaotian"
LLAVA_HF_LAYOUT = "llava-hf"

_PROJECTOR_KEY = re.compile(r"^model\.mm_projector\.([02])\.(weight|bias)$")
_TOWER_PREFIX = "model.vision_tower."


@dataclass
class LlavaParts:
    """A LLaVA folder's decoder config and weights (HF Llama keys), projector weights (``0.*``, ``2.*``) and the
    vision settings recorded in its config.

    ``layout`` is "liuhaotian" or "llava-hf". A llava-hf folder also carries its tower (``vision_config``,
    ``vision_state_dict`` with ``CLIPVisionTower`` keys) and its in-vocabulary ``image_token_index``; for a liuhaotian
    folder these are None (the tower comes from a CLIP folder, the image placeholder is −200).
    """

    llm_config: LlamaConfig
    llm_state_dict: dict[str, torch.Tensor]
    projector_state_dict: dict[str, torch.Tensor]
    vision_select_layer: int
    vision_tower_name: str | None
    layout: str = LIUHAOTIAN_LAYOUT
    vision_config: CLIPVisionConfig | None = None
    vision_state_dict: dict[str, torch.Tensor] | None = None
    image_token_index: int | None = None


def llava_settings(
    *, layout: str, vision_select_layer: int, image_token_index: int | None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``MFRSVLMConfig`` settings a LLaVA folder implies (besides its tower and decoder configs), ``overrides`` last.

    Both layouts: ``global_layer`` = the folder's select layer. llava-hf (the LLaVA-1.5 model as transformers runs
    it): ``detail=False``, ``image_placement="token"``, ``image_token_index`` = its in-vocabulary image token, and no
    injection layers unless ``detail=True`` is asked for.
    """
    overrides = dict(overrides or {})
    settings: dict[str, Any] = {"global_layer": vision_select_layer}
    if layout == LLAVA_HF_LAYOUT:
        settings.update(detail=False, image_placement="token", image_token_index=image_token_index)
        if overrides.get("detail", False) is False:
            settings["injection_layers"] = ()
    settings.update(overrides)
    return settings


def read_llava(folder: str | os.PathLike, *, check_finite: bool = True) -> LlavaParts:
    """Read a LLaVA-1.5 folder (liuhaotian or llava-hf layout, chosen from ``config.json``); raises
    ``CheckpointError`` listing keys outside the layout, or naming an unsupported setting.
    ``check_finite``: refuse NaN/inf tensors, naming file and key."""
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path)
    if is_llava_hf_config(data):
        parts = read_llava_hf(folder, check_finite=check_finite)
        tower = data.get("vision_config") or {}
        name = tower.get("_name_or_path") if isinstance(tower, dict) else None
        return LlavaParts(
            llm_config=parts["llm_config"],
            llm_state_dict=parts["llm_state_dict"],
            projector_state_dict=parts["projector_state_dict"],
            vision_select_layer=parts["vision_select_layer"],
            vision_tower_name=name if isinstance(name, str) and name else None,
            layout=LLAVA_HF_LAYOUT,
            vision_config=parts["vision_config"],
            vision_state_dict=parts["vision_state_dict"],
            image_token_index=parts["image_token_index"],
        )
    projector_type = data.get("mm_projector_type", "mlp2x_gelu")
    if projector_type != "mlp2x_gelu":
        raise CheckpointError(f"{config_path}: mm_projector_type {projector_type!r} is not supported (only 'mlp2x_gelu')")
    select = data.get("mm_vision_select_layer", -2)
    if isinstance(select, list):
        if len(select) != 1:
            raise CheckpointError(f"{config_path}: mm_vision_select_layer {select} selects several layers")
        select = select[0]
    if isinstance(select, bool) or not isinstance(select, int):
        raise CheckpointError(f"{config_path}: field 'mm_vision_select_layer' must be an int, got {select!r}")
    llm_config = read_llama_config(folder)
    llm_state: dict[str, torch.Tensor] = {}
    projector: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path, shard in iter_weight_shards(folder, check_finite=check_finite):
        kept: dict[str, torch.Tensor] = {}
        for key, tensor in shard.items():
            match = _PROJECTOR_KEY.match(key)
            if is_llama_key(key):
                llm_state[key] = kept[key] = tensor
            elif match:
                projector[f"{match.group(1)}.{match.group(2)}"] = kept[key] = tensor
            elif key.startswith(_TOWER_PREFIX) or key.endswith("rotary_emb.inv_freq"):
                continue
            else:
                unexpected.append(f"{key} ({path.name})")
        check_floating_tensors(kept, source=path)
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
