"""Reader for the released MF-RSVLM layout (``FelixKAI/mfrsvlm-7b_sft``, ``FelixKAI/mf_rsvlm_7b_pretrained``).

Folder (docs/DESIGN_NOTES.md §3): ``config.json`` with ``model_type`` "mfrsvlm" (or "vhm"), ``mm_vision_select_layer: [24]``,
``deepstack_injection_layers`` (1-based), ``deepstack_detail_layers`` (fractions of the tower depth),
``deepstack_window_scales``, ``deepstack_downsample_factor``; main shards with the Llama keys,
``model.mm_projector.{0,2}.*`` and, per injection rank ``r`` (ascending layer order), ``model.deepstack_*.r.*`` plus one
vector ``model.deepstack_residual_scale`` ``[n_layers]``; the fine-tuned tower in ``vision_tower/`` (HF CLIP config +
``vision_model.*`` weights).

``read_released_mfrsvlm`` returns an ``MFRSVLMConfig``-style dict and a state dict in ``MFRSVLM``'s key names
(``vision_tower.*``, ``projector.*``, ``llm.*``, ``injectors.{i}.*``). The view sizes are derived from the tower's
``image_size``, and ``window_layout`` is "reference" (the released weights were trained on the reference's window
memory layout). Pure functions: no model class is imported here.
"""

import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from rsfuse.checkpoints.clip import read_clip_vision, read_clip_vision_config
from rsfuse.checkpoints.io import CheckpointError, check_floating_tensors, iter_weight_shards, merge_shards, read_json
from rsfuse.checkpoints.llama import is_llama_key
from rsfuse.encoders.clip_config import PAPER_DETAIL_FRACTIONS, CLIPVisionConfig, detail_layers_from_fractions
from rsfuse.llm.config import LlamaConfig

__all__ = ["RELEASED_MODEL_TYPES", "read_released_mfrsvlm", "iter_released_mfrsvlm", "released_config", "rename_released_key"]

RELEASED_MODEL_TYPES = ("mfrsvlm", "vhm")
VISION_SUBFOLDER = "vision_tower"
_INJECTOR_PARTS = {
    "deepstack_hidden_norms": "hidden_norm",
    "deepstack_detail_norms": "detail_norm",
    "deepstack_detail_proj": "detail_proj",
    "deepstack_gate_proj": "gate_proj",
    "deepstack_router_query": "router.query",
    "deepstack_router_key": "router.key",
}
_INJECTOR_KEY = re.compile(r"^model\.(deepstack_[a-z_]+)\.(\d+)\.(.+)$")
_PROJECTOR_KEY = re.compile(r"^model\.mm_projector\.([02])\.(weight|bias)$")
_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
RESIDUAL_SCALE_KEY = "model.deepstack_residual_scale"


def _as_int_list(value: Any, field: str, path: Path) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise CheckpointError(f"{path}: field {field!r} must be an int or a list of ints, got {value!r}")
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_list(data: dict[str, Any], field: str, default: list[float], path: Path, *, zero: bool) -> list[float]:
    """A non-empty list of numbers in (0, 1] (``[0, 1]`` with ``zero``): ``deepstack_detail_layers`` fractions of the
    tower depth, ``deepstack_window_scales``."""
    values = data.get(field, default)
    low = 0.0 if zero else math.nextafter(0.0, 1.0)
    if not isinstance(values, list) or not values or not all(_is_number(v) and low <= v <= 1 for v in values):
        interval = "[0, 1]" if zero else "(0, 1]"
        raise CheckpointError(f"{path}: field {field!r} must be a non-empty list of numbers in {interval}, got {values!r}")
    return [float(v) for v in values]


def _int_field(data: dict[str, Any], field: str, default: int, path: Path, *, positive: bool = False) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        raise CheckpointError(f"{path}: field {field!r} must be {'a positive' if positive else 'an'} int, got {value!r}")
    return value


def released_config(data: dict[str, Any], vision: CLIPVisionConfig, *, path: Path) -> dict[str, Any]:
    """``MFRSVLMConfig`` dict from a released ``config.json`` dict and the tower's config; a field of the wrong type
    raises ``CheckpointError`` (or, for the Llama fields, ValueError) naming its key."""
    depth = vision.num_hidden_layers
    select = _as_int_list(data.get("mm_vision_select_layer", -2), "mm_vision_select_layer", path)
    if len(select) != 1:
        raise CheckpointError(f"{path}: mm_vision_select_layer {select} selects several layers; one is supported")
    projector_type = data.get("mm_projector_type", "mlp2x_gelu")
    if projector_type != "mlp2x_gelu":
        raise CheckpointError(f"{path}: mm_projector_type {projector_type!r} is not supported (only 'mlp2x_gelu')")
    fractions = _number_list(data, "deepstack_detail_layers", list(PAPER_DETAIL_FRACTIONS), path, zero=True)
    injection = _as_int_list(data.get("deepstack_injection_layers", [2, 4, 6, 8]), "deepstack_injection_layers", path)
    scales = _number_list(data, "deepstack_window_scales", [1.0, 0.5], path, zero=False)
    stack_factor = _int_field(data, "deepstack_downsample_factor", 2, path, positive=True)
    image_token_index = _int_field(data, "image_token_index", -200, path)
    llm = LlamaConfig.from_dict(data)
    return {
        "vision": vision.to_dict(),
        "llm": llm.to_dict(),
        "global_layer": select[0],
        "detail_layers": list(detail_layers_from_fractions(fractions, depth)),
        "window_scales": scales,
        "stack_factor": stack_factor,
        "injection_layers": sorted(injection),
        "canvas_source": "upsampled",
        "image_placement": "prefix",
        "window_layout": "reference",
        "blend": "hann",
        "router_mode": "sample",
        "detail": True,
        "image_token_index": image_token_index,
    }


def rename_released_key(key: str, injection_layers: list[int]) -> str | None:
    """rsfuse name of a main-shard key (None for keys this function does not map)."""
    if is_llama_key(key):
        return "llm." + key
    match = _PROJECTOR_KEY.match(key)
    if match:
        return f"projector.{match.group(1)}.{match.group(2)}"
    match = _INJECTOR_KEY.match(key)
    if match and match.group(1) in _INJECTOR_PARTS:
        rank = int(match.group(2))
        if rank >= len(injection_layers):
            return None
        return f"injectors.{injection_layers[rank] - 1}.{_INJECTOR_PARTS[match.group(1)]}.{match.group(3)}"
    if key.startswith(_TOWER_PREFIX):
        return "vision_tower." + key.removeprefix(_TOWER_PREFIX)
    return None


def read_released_mfrsvlm(
    folder: str | os.PathLike, *, check_finite: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(MFRSVLMConfig dict, state dict in MFRSVLM keys)`` of a released MF-RSVLM folder: the shards of
    `iter_released_mfrsvlm` merged."""
    config, shards = iter_released_mfrsvlm(folder, check_finite=check_finite)
    return config, merge_shards(shards)


def iter_released_mfrsvlm(
    folder: str | os.PathLike, *, check_finite: bool = True
) -> tuple[dict[str, Any], Iterator[tuple[Path, dict[str, torch.Tensor]]]]:
    """``(MFRSVLMConfig dict, iterator of (path, state dict in MFRSVLM keys))`` of a released MF-RSVLM folder: the
    main shards one at a time, then the injectors' residual scales, then the tower of ``vision_tower/`` (which
    replaces any tower weights in the main shards).

    Keys the layout does not define are refused, listed by name, once every shard has been seen (a loader discards
    what it assigned); ``check_finite``: refuse NaN/inf tensors, naming file and key.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path)
    if data.get("model_type") not in RELEASED_MODEL_TYPES:
        raise CheckpointError(
            f"{config_path}: model_type {data.get('model_type')!r} is not a released MF-RSVLM checkpoint "
            f"(expected one of {RELEASED_MODEL_TYPES})"
        )
    tower_folder = folder / VISION_SUBFOLDER
    if not (tower_folder / "config.json").is_file():
        raise CheckpointError(
            f"{tower_folder}: the fine-tuned vision tower (HF CLIP config.json + weights) is missing; the released "
            "layout keeps it in the 'vision_tower/' sub-folder"
        )
    try:
        config = released_config(data, read_clip_vision_config(tower_folder / "config.json"), path=config_path)
    except ValueError as error:
        raise CheckpointError(f"{config_path}: {error}") from None
    injection = config["injection_layers"]

    def shards() -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
        unexpected: list[str] = []
        residual_scale: torch.Tensor | None = None
        for path, shard in iter_weight_shards(folder, check_finite=check_finite):
            stored: dict[str, torch.Tensor] = {}  # under the file's own key names, for the error messages
            kept: dict[str, torch.Tensor] = {}
            for key, tensor in shard.items():
                if key.endswith(("rotary_emb.inv_freq", "embeddings.position_ids")):  # buffers old HF versions stored
                    continue
                if key == RESIDUAL_SCALE_KEY:
                    residual_scale = stored[key] = tensor.clone()  # a copy: kept to the end, not its shard
                    continue
                new_key = rename_released_key(key, injection)
                if new_key is None:
                    unexpected.append(f"{key} ({path.name})")
                elif not new_key.startswith("vision_tower."):  # the sub-folder's tower is the one read
                    kept[new_key] = stored[key] = tensor
            check_floating_tensors(stored, source=path)
            yield path, kept
            shard = kept = stored = tensor = None  # nothing of this shard held while the next one is read
        if unexpected:
            raise CheckpointError(f"{folder}: keys not part of the released MF-RSVLM layout: {unexpected}")
        if residual_scale is None:
            raise CheckpointError(f"{folder}: missing key {RESIDUAL_SCALE_KEY!r} (one scale per injection layer)")
        if tuple(residual_scale.shape) != (len(injection),):
            raise CheckpointError(
                f"{folder}: {RESIDUAL_SCALE_KEY} has shape {tuple(residual_scale.shape)}, expected ({len(injection)},) "
                f"for injection layers {injection}"
            )
        yield folder, {f"injectors.{layer - 1}.residual_scale": residual_scale[rank : rank + 1].clone()
                       for rank, layer in enumerate(injection)}
        _, tower_state = read_clip_vision(tower_folder, check_finite=check_finite)
        yield tower_folder, {"vision_tower." + key: tensor for key, tensor in tower_state.items()}

    return config, shards()
