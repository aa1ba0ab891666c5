"""Reader for transformers' LLaVA layout (``LlavaForConditionalGeneration.save_pretrained``, ``llava-hf/llava-1.5-7b-hf``).

``config.json`` (``model_type`` "llava") nests ``text_config`` (a Llama config) and ``vision_config`` (a CLIP vision
config); sub-config fields a file leaves out take transformers' defaults (an absent ``vision_config`` is LLaVA's
default ViT-L/14-336). Top-level fields read: ``image_token_index`` (transformers 4) or ``image_token_id``
(default 32000: an in-vocabulary token that the llava-hf processor repeats once per visual token),
``vision_feature_layer`` (one int; default −2), ``vision_feature_select_strategy`` ("default" = CLS dropped),
``projector_hidden_act`` ("gelu"), ``multimodal_projector_bias`` (default true), ``tie_word_embeddings``.

Weight keys, in any of the spellings transformers has written:

* decoder: ``language_model.model.*`` + ``language_model.lm_head.*`` (Hub files, and what transformers 5 still
  writes), or ``model.language_model.*`` + ``lm_head.*`` (transformers' in-memory names);
* tower: ``vision_tower.vision_model.*``, ``vision_tower.*`` or ``model.vision_tower.[vision_model.]*``;
* projector: ``[model.]multi_modal_projector.linear_{1,2}.{weight,bias}`` → ``0.*`` / ``2.*`` of ``MLPProjector``.

Several feature layers (a list ``vision_feature_layer``) and ``vision_feature_select_strategy="full"`` (CLS kept)
have no counterpart in rsfuse and are refused, naming the setting. Pure functions: no model class here.
"""

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from rsfuse.checkpoints.clip import _validate as validate_clip_vision
from rsfuse.checkpoints.io import CheckpointError, check_floating_tensors, iter_weight_shards, read_json
from rsfuse.checkpoints.llama import is_llama_key
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.llm.config import LlamaConfig

__all__ = [
    "LLAVA_HF_DEFAULT_VISION",
    "is_llava_hf_config",
    "read_llava_hf",
    "read_llava_hf_config",
    "rename_llava_hf_key",
]

# transformers' LlavaConfig builds this tower when ``vision_config`` is absent (fields beyond CLIP's own defaults).
LLAVA_HF_DEFAULT_VISION = {
    "intermediate_size": 4096,
    "hidden_size": 1024,
    "patch_size": 14,
    "image_size": 336,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}
DEFAULT_IMAGE_TOKEN_ID = 32000
_HF_ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaModel")
_INNER_MODEL = re.compile(r"^model\.(?=language_model\.|vision_tower\.|multi_modal_projector\.)")
_PROJECTOR_KEY = re.compile(r"^multi_modal_projector\.linear_([12])\.(weight|bias)$")
_PROJECTOR_INDEX = {"1": "0", "2": "2"}
_DROPPED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def is_llava_hf_config(data: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` dict is transformers' LLaVA layout (nested sub-configs), not liuhaotian's."""
    architectures = data.get("architectures") or []
    return (
        "text_config" in data
        or "vision_config" in data
        or (isinstance(architectures, list) and any(name in _HF_ARCHITECTURES for name in architectures))
    )


def rename_llava_hf_key(key: str) -> tuple[str, str] | None:
    """``(part, key)`` with part "llm" (HF Llama key), "vision" (tower key) or "projector" (``0.*`` / ``2.*``);
    None for a key outside the layout."""
    key = _INNER_MODEL.sub("", key)
    if key.startswith("language_model.lm_head."):
        llm_key = key.removeprefix("language_model.")
    elif key.startswith("language_model.model."):
        llm_key = key.removeprefix("language_model.")
    elif key.startswith("language_model."):
        llm_key = "model." + key.removeprefix("language_model.")
    elif key.startswith("lm_head."):
        llm_key = key
    elif key.startswith("vision_tower."):
        tower_key = key.removeprefix("vision_tower.").removeprefix("vision_model.")
        return "vision", tower_key
    else:
        match = _PROJECTOR_KEY.match(key)
        if match is None:
            return None
        return "projector", f"{_PROJECTOR_INDEX[match.group(1)]}.{match.group(2)}"
    return ("llm", llm_key) if is_llama_key(llm_key) else None


def _sub_config(data: Mapping[str, Any], name: str, model_type: str, config_path: Path) -> dict[str, Any]:
    sub = data.get(name, {})
    if sub is None:
        sub = {}
    if not isinstance(sub, Mapping):
        raise CheckpointError(f"{config_path}: '{name}' must be an object, got {type(sub).__name__}")
    found = sub.get("model_type", model_type)
    if found != model_type:
        raise CheckpointError(
            f"{config_path}: {name}.model_type {found!r} is not supported (rsfuse reads LLaVA with a "
            f"{model_type!r} {name.split('_')[0]} model)"
        )
    return dict(sub)


def _feature_layer(data: Mapping[str, Any], config_path: Path) -> int:
    layer = data.get("vision_feature_layer", -2)
    if isinstance(layer, list):
        if len(layer) != 1:
            raise CheckpointError(
                f"{config_path}: vision_feature_layer {layer} concatenates several feature layers; rsfuse takes the "
                "global tokens from one hidden state (an int) and cannot load this model"
            )
        layer = layer[0]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise CheckpointError(f"{config_path}: vision_feature_layer must be an int, got {layer!r}")
    return layer


def _settings(data: Mapping[str, Any], config_path: Path) -> None:
    strategy = data.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise CheckpointError(
            f"{config_path}: vision_feature_select_strategy {strategy!r} is not supported (only 'default': the CLS "
            "token dropped, one visual token per patch)"
        )
    activation = data.get("projector_hidden_act", "gelu")
    if activation != "gelu":
        raise CheckpointError(f"{config_path}: projector_hidden_act {activation!r} is not supported (only 'gelu')")


def _image_token_id(data: Mapping[str, Any], vocab_size: int, config_path: Path) -> int:
    token = data.get("image_token_id", data.get("image_token_index", DEFAULT_IMAGE_TOKEN_ID))
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
        raise CheckpointError(
            f"{config_path}: image_token_index {token!r} must be a token id of the {vocab_size}-token vocabulary"
        )
    return token


def _flag(data: Mapping[str, Any], name: str, default: bool, config_path: Path) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"{config_path}: field {name!r} must be true or false, got {value!r}")
    return value


def _llm_config(data: Mapping[str, Any], config_path: Path) -> LlamaConfig:
    text = _sub_config(data, "text_config", "llama", config_path)
    if _flag(data, "tie_word_embeddings", False, config_path):
        text["tie_word_embeddings"] = True
    pad = data.get("pad_token_id")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
        raise CheckpointError(f"{config_path}: field 'pad_token_id' must be a token id (an int) or null, got {pad!r}")
    if text.get("pad_token_id") is None and pad is not None:
        text["pad_token_id"] = pad
    try:
        return LlamaConfig.from_dict(text, key_prefix="text_config.")
    except ValueError as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def _vision_config(data: Mapping[str, Any], config_path: Path) -> CLIPVisionConfig:
    if data.get("vision_config") is None:  # transformers builds LLaVA's default tower; a given dict takes CLIP's defaults
        vision = dict(LLAVA_HF_DEFAULT_VISION)
    else:
        vision = _sub_config(data, "vision_config", "clip_vision_model", config_path)
    try:
        return CLIPVisionConfig.from_dict(vision, key_prefix="vision_config.")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def read_llava_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings of a transformers LLaVA folder from its ``config.json`` alone (no weight is read): a dict with
    ``llm_config``, ``vision_config``, ``vision_select_layer`` (``vision_feature_layer``) and ``image_token_index``
    (the in-vocabulary image token id), checked as `read_llava_hf` checks them (``CheckpointError`` naming the file
    and the setting)."""
    config_path = Path(folder) / "config.json"
    data = read_json(config_path)
    if data.get("model_type", "llava") != "llava":
        raise CheckpointError(f"{config_path}: model_type {data.get('model_type')!r} is not transformers' 'llava'")
    _settings(data, config_path)
    llm_config = _llm_config(data, config_path)
    return {
        "llm_config": llm_config,
        "vision_config": _vision_config(data, config_path),
        "vision_select_layer": _feature_layer(data, config_path),
        "image_token_index": _image_token_id(data, llm_config.vocab_size, config_path),
    }


def read_llava_hf(folder: str | os.PathLike, *, check_finite: bool = True) -> dict[str, Any]:
    """Read a transformers LLaVA folder.

    Returns a dict with ``llm_config``, ``llm_state_dict`` (HF Llama keys), ``projector_state_dict`` (``0.*``,
    ``2.*``), ``vision_config``, ``vision_state_dict`` (``CLIPVisionTower`` keys), ``vision_select_layer``
    (``vision_feature_layer``) and ``image_token_index`` (the in-vocabulary image token id). Raises
    ``CheckpointError`` naming the file and the setting or keys that do not fit.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path)
    if data.get("model_type", "llava") != "llava":
        raise CheckpointError(f"{config_path}: model_type {data.get('model_type')!r} is not transformers' 'llava'")
    select_layer = _feature_layer(data, config_path)
    _settings(data, config_path)
    projector_bias = _flag(data, "multimodal_projector_bias", True, config_path)
    llm_config = _llm_config(data, config_path)
    vision_config = _vision_config(data, config_path)
    image_token = _image_token_id(data, llm_config.vocab_size, config_path)
    depth = vision_config.num_hidden_layers
    if not -(depth + 1) <= select_layer <= depth:
        raise CheckpointError(
            f"{config_path}: vision_feature_layer {select_layer} does not exist in a {depth}-block vision tower "
            f"(hidden states 0..{depth}, or negative from the end)"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {"llm": {}, "vision": {}, "projector": {}}
    origin: dict[tuple[str, str], str] = {}
    unexpected: list[str] = []
    duplicated: list[str] = []
    for path, shard in iter_weight_shards(folder, check_finite=check_finite):
        check_floating_tensors({k: v for k, v in shard.items() if not k.endswith(_DROPPED_SUFFIXES)}, source=path)
        for key, tensor in shard.items():
            if key.endswith(_DROPPED_SUFFIXES):
                continue
            renamed = rename_llava_hf_key(key)
            if renamed is None:
                unexpected.append(f"{key} ({path.name})")
                continue
            if renamed in origin:
                duplicated.append(f"{key} and {origin[renamed]} ({path.name})")
                continue
            origin[renamed] = key
            part, new_key = renamed
            parts[part][new_key] = tensor
    if unexpected:
        raise CheckpointError(f"{folder}: keys not part of transformers' LLaVA layout: {unexpected[:40]}")
    if duplicated:
        raise CheckpointError(f"{folder}: the same weight is stored twice under different names: {duplicated[:10]}")
    projector = parts["projector"]
    missing = sorted({"0.weight", "2.weight"} - set(projector))
    if missing:
        names = [f"multi_modal_projector.linear_{'1' if key[0] == '0' else '2'}.weight" for key in missing]
        raise CheckpointError(f"{folder}: LLaVA folder lacks projector keys {names}")
    if not projector_bias:
        for index in ("0", "2"):
            weight = projector[f"{index}.weight"]
            projector.setdefault(f"{index}.bias", weight.new_zeros(weight.shape[0]))
    missing_bias = sorted({"0.bias", "2.bias"} - set(projector))
    if missing_bias:
        names = [f"multi_modal_projector.linear_{'1' if key[0] == '0' else '2'}.bias" for key in missing_bias]
        raise CheckpointError(f"{folder}: LLaVA folder lacks projector keys {names} (multimodal_projector_bias is true)")
    validate_clip_vision(parts["vision"], vision_config, f"{folder} (vision_tower.*)")
    return {
        "llm_config": llm_config,
        "llm_state_dict": parts["llm"],
        "projector_state_dict": projector,
        "vision_config": vision_config,
        "vision_state_dict": parts["vision"],
        "vision_select_layer": select_layer,
        "image_token_index": image_token,
    }
