"""CLIP vision checkpoints: pure readers/writers from files to ``(CLIPVisionConfig, state dict)`` and back.

Layouts read (chosen from the weight keys, never from a file name):

* HF full CLIP folder: ``config.json`` with ``vision_config``; ``vision_model.*`` keys plus ``text_model.*``,
  ``visual_projection``, ``text_projection``, ``logit_scale`` (ignored).
* HF vision-only folder (``CLIPVisionModel``, ``model_type`` "clip_vision_model"): ``vision_model.*`` keys (Hub files, the
  MF-RSVLM ``vision_tower/``), or the unprefixed keys that transformers 5 ``save_pretrained`` writes.
* OpenAI / open_clip state dict (file, or folder holding one): ``visual.*`` keys with a fused ``attn.in_proj_weight``;
  the config is inferred from shapes (heads = width // 64 unless ``open_clip_config.json`` or the caller says otherwise).

The returned state dict uses the keys of ``rsfuse.encoders.CLIPVisionTower`` (HF's without ``vision_model.``).
"""

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from rsfuse.checkpoints.io import (
    PICKLE_SUFFIXES,
    CheckpointError,
    check_floating_tensors,
    find_weight_files,
    load_weights_file,
    read_json,
)
from rsfuse.encoders.clip_config import CLIPVisionConfig

__all__ = [
    "read_clip_vision",
    "read_clip_vision_config",
    "clip_vision_shapes",
    "save_clip_vision",
    "openai_to_hf_vision",
]

HF_PREFIX = "vision_model."
OPENAI_PREFIX = "visual."
OPEN_CLIP_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_VISION_ROOTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
POSITION_IDS_KEYS = ("embeddings.position_ids",)
# Keys of the text tower and the projection heads, in both layouts: never part of the vision tower.
IGNORED_PREFIXES = (
    "text_model.",
    "visual_projection.",
    "text_projection",
    "logit_scale",
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
)
OPENAI_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
OPENAI_TOP_RENAMES = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
OPENAI_IGNORED = ("proj",)  # the image projection head (HF's visual_projection, transposed)
_BLOCK_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
_OPENAI_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def clip_vision_shapes(config: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    """Every key of ``CLIPVisionTower(config).state_dict()`` with its shape (computed without building the model)."""
    width, mlp, patch = config.hidden_size, config.intermediate_size, config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.class_embedding": (width,),
        "embeddings.patch_embedding.weight": (width, config.num_channels, patch, patch),
        "embeddings.position_embedding.weight": (config.num_positions, width),
        "pre_layrnorm.weight": (width,),
        "pre_layrnorm.bias": (width,),
    }
    per_block = {
        **{f"self_attn.{name}_proj.weight": (width, width) for name in ("q", "k", "v", "out")},
        **{f"self_attn.{name}_proj.bias": (width,) for name in ("q", "k", "v", "out")},
        "layer_norm1.weight": (width,),
        "layer_norm1.bias": (width,),
        "mlp.fc1.weight": (mlp, width),
        "mlp.fc1.bias": (mlp,),
        "mlp.fc2.weight": (width, mlp),
        "mlp.fc2.bias": (width,),
        "layer_norm2.weight": (width,),
        "layer_norm2.bias": (width,),
    }
    for block in range(config.num_hidden_layers):
        shapes.update({f"encoder.layers.{block}.{name}": shape for name, shape in per_block.items()})
    shapes["post_layernorm.weight"] = (width,)
    shapes["post_layernorm.bias"] = (width,)
    return shapes


# ----- locating files ----------------------------------------------------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: CLIP checkpoint not found (expected a folder or a weights file)")
    try:
        return find_weight_files(path)
    except CheckpointError as standard_error:
        for name in OPEN_CLIP_WEIGHT_NAMES:
            if (path / name).is_file():
                return [path / name]
        candidates = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES) and p.is_file())
        if len(candidates) == 1:
            return candidates
        if candidates:
            raise CheckpointError(
                f"{path}: several weight files and no shard index; cannot tell which is the CLIP checkpoint: "
                f"{[p.name for p in candidates]}"
            ) from None
        raise standard_error


def _keep_key(key: str) -> bool:
    return not key.startswith(IGNORED_PREFIXES)


def _load_vision_tensors(files: list[Path], *, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Merge the files' tensors, dropping text-tower and projection keys as each shard is read."""
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        kept = {key: tensor for key, tensor in load_weights_file(file, check_finite=check_finite).items() if _keep_key(key)}
        weights = {key: tensor for key, tensor in kept.items() if not key.endswith(POSITION_IDS_KEYS)}
        check_floating_tensors(weights, source=file)  # integer position_ids buffers aside, every tensor is a weight
        merged.update(kept)
    return merged


# ----- layout conversion -------------------------------------------------------------------------------------------
def openai_to_hf_vision(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename OpenAI/open_clip ``visual.*`` keys to the tower's HF keys; split the fused ``in_proj`` into q, k, v."""
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for full_key, tensor in state_dict.items():
        if not full_key.startswith(OPENAI_PREFIX):
            unexpected.append(full_key)
            continue
        key = full_key[len(OPENAI_PREFIX) :]
        if key in OPENAI_IGNORED:
            continue
        if key in OPENAI_TOP_RENAMES:
            converted[OPENAI_TOP_RENAMES[key]] = tensor
            continue
        match = _OPENAI_BLOCK_KEY.match(key)
        if match is None:
            unexpected.append(full_key)
            continue
        block, rest = match.groups()
        prefix = f"encoder.layers.{block}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            if tensor.shape[0] % 3 != 0:
                raise CheckpointError(
                    f"{source}: {full_key} has shape {tuple(tensor.shape)}; its first dim must be 3 × width (fused q, k, v)"
                )
            for name, part in zip(("q", "k", "v"), tensor.chunk(3, dim=0)):
                converted[f"{prefix}self_attn.{name}_proj.{kind}"] = part.clone()
            continue
        module, _, param = rest.rpartition(".")
        if module not in OPENAI_BLOCK_RENAMES:
            unexpected.append(full_key)
            continue
        converted[f"{prefix}{OPENAI_BLOCK_RENAMES[module]}.{param}"] = tensor
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys in an OpenAI/open_clip CLIP checkpoint: {sorted(unexpected)}")
    return converted


def _strip_hf_prefix(state_dict: Mapping[str, torch.Tensor], *, prefixed: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state_dict.items():
        if prefixed and key.startswith(HF_PREFIX):
            key = key[len(HF_PREFIX) :]
        out[key] = tensor
    return {key: tensor for key, tensor in out.items() if key not in POSITION_IDS_KEYS}


def _detect_layout(keys: set[str], source: str) -> str:
    has_hf = any(key.startswith(HF_PREFIX) for key in keys)
    has_openai = any(key.startswith(OPENAI_PREFIX) for key in keys)
    if has_hf and has_openai:
        raise CheckpointError(f"{source}: mixes HF ('vision_model.*') and OpenAI ('visual.*') CLIP keys")
    if has_hf:
        return "hf"
    if has_openai:
        return "openai"
    if "embeddings.patch_embedding.weight" in keys:
        return "hf_unprefixed"
    raise CheckpointError(
        f"{source}: no CLIP vision weights found (expected 'vision_model.*', 'visual.*' or "
        f"'embeddings.patch_embedding.weight'); first keys: {sorted(keys)[:8]}"
    )


# ----- configs -----------------------------------------------------------------------------------------------------
def _hf_config(config_path: Path) -> CLIPVisionConfig:
    data = read_json(config_path)
    if "vision_config" not in data and data.get("model_type") not in ("clip", "clip_vision_model"):
        raise CheckpointError(
            f"{config_path}: not a CLIP config (model_type {data.get('model_type')!r}, no 'vision_config')"
        )
    try:
        return CLIPVisionConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def read_clip_vision_config(path: str | os.PathLike) -> CLIPVisionConfig:
    """The `CLIPVisionConfig` of an HF CLIP folder (vision-only or full) or of its ``config.json``, from that file
    alone (no weight is read); ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    return _hf_config(path / "config.json" if path.is_dir() else path)


def _open_clip_hints(folder: Path) -> dict:
    """``head_width`` and activation from an ``open_clip_config.json`` beside the weights, when there is one."""
    path = folder / OPEN_CLIP_CONFIG
    if not path.is_file():
        return {}
    model_cfg = read_json(path).get("model_cfg", {})
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{path}: field 'model_cfg' must be an object, got {model_cfg!r}")
    vision_cfg = model_cfg.get("vision_cfg", {})
    if not isinstance(vision_cfg, dict):
        raise CheckpointError(f"{path}: field 'model_cfg.vision_cfg' must be an object, got {vision_cfg!r}")
    quick_gelu = model_cfg.get("quick_gelu", False)
    if not isinstance(quick_gelu, bool):
        raise CheckpointError(f"{path}: field 'model_cfg.quick_gelu' must be true or false, got {quick_gelu!r}")
    hints = {"hidden_act": "quick_gelu" if quick_gelu else "gelu"}
    if "head_width" in vision_cfg:
        width = vision_cfg["head_width"]
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise CheckpointError(f"{path}: field 'model_cfg.vision_cfg.head_width' must be a positive int, got {width!r}")
        hints["head_width"] = width
    return hints


def _infer_config(
    state_dict: Mapping[str, torch.Tensor], *, source: str, num_attention_heads: int | None, hints: dict
) -> CLIPVisionConfig:
    """Config from tensor shapes (HF key names); heads from the caller, a head width hint, or width // 64."""
    for key in ("embeddings.patch_embedding.weight", "embeddings.position_embedding.weight", "encoder.layers.0.mlp.fc1.weight"):
        if key not in state_dict:
            raise CheckpointError(f"{source}: cannot infer the CLIP config, key {key!r} is missing")
    patch_weight = state_dict["embeddings.patch_embedding.weight"]
    if patch_weight.ndim != 4 or patch_weight.shape[-1] != patch_weight.shape[-2]:
        raise CheckpointError(f"{source}: patch embedding weight has shape {tuple(patch_weight.shape)}, expected [C, 3, P, P]")
    width, channels, patch = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[-1]
    positions = state_dict["embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(max(positions - 1, 0))
    if grid * grid != positions - 1 or grid == 0:
        raise CheckpointError(f"{source}: position embedding has {positions} rows, not 1 + a square number of patches")
    layers = len({int(m.group(1)) for key in state_dict if (m := _BLOCK_KEY.match(key))})
    if num_attention_heads is None:
        head_width = int(hints.get("head_width", 64))
        if width % head_width != 0:
            raise CheckpointError(
                f"{source}: width {width} is not a multiple of the head width {head_width}; pass num_attention_heads"
            )
        num_attention_heads = width // head_width
    try:
        return CLIPVisionConfig(
            image_size=grid * patch,
            patch_size=patch,
            hidden_size=width,
            intermediate_size=state_dict["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=layers,
            num_attention_heads=num_attention_heads,
            hidden_act=hints.get("hidden_act", "quick_gelu"),
            num_channels=channels,
        )
    except ValueError as error:
        raise CheckpointError(f"{source}: inferred CLIP config is invalid: {error}") from None


def _validate(state_dict: Mapping[str, torch.Tensor], config: CLIPVisionConfig, source: str) -> None:
    expected = clip_vision_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise CheckpointError(f"{source}: CLIP vision weights do not match the config: " + "; ".join(parts))
    for key, shape in expected.items():
        found = tuple(state_dict[key].shape)
        if found != shape:
            raise CheckpointError(f"{source}: {key} has shape {found}, expected {shape} from the config")


# ----- public entry points -----------------------------------------------------------------------------------------
def read_clip_vision(
    path: str | os.PathLike, *, num_attention_heads: int | None = None, check_finite: bool = True
) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """Read a CLIP vision tower from an HF folder (full or vision-only) or an OpenAI/open_clip file or folder.

    Returns the config and a state dict keyed like ``CLIPVisionTower`` (tensors keep their stored dtype).
    ``num_attention_heads`` overrides the head count (needed for OpenAI layouts whose head width is not 64).
    Raises ``CheckpointError`` naming the file and the offending keys or shapes (or, with ``check_finite``, the
    tensors holding NaN/inf).
    """
    path = Path(path)
    files = _weight_files(path)
    folder = path if path.is_dir() else path.parent
    source = str(path)
    raw = _load_vision_tensors(files, check_finite=check_finite)
    layout = _detect_layout(set(raw), source)
    config_path = folder / "config.json"
    if layout == "openai":
        state_dict = openai_to_hf_vision(raw, source=source)
        config = _infer_config(
            state_dict, source=source, num_attention_heads=num_attention_heads, hints=_open_clip_hints(folder)
        )
    else:
        state_dict = _strip_hf_prefix(raw, prefixed=layout == "hf")
        if config_path.is_file():
            config = _hf_config(config_path)
            if num_attention_heads is not None and num_attention_heads != config.num_attention_heads:
                raise CheckpointError(
                    f"{config_path}: num_attention_heads={config.num_attention_heads} conflicts with the requested "
                    f"{num_attention_heads}"
                )
        else:
            config = _infer_config(state_dict, source=source, num_attention_heads=num_attention_heads, hints={})
    _validate(state_dict, config, source)
    return config, state_dict


def save_clip_vision(
    folder: str | os.PathLike,
    config: CLIPVisionConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    file_format: str = "safetensors",
) -> Path:
    """Write an HF vision-only CLIP folder (``config.json`` + ``vision_model.*`` weights) that ``read_clip_vision`` and
    transformers' ``CLIPVisionModel.from_pretrained`` both read. ``file_format`` is "safetensors" or "bin"."""
    if file_format not in ("safetensors", "bin"):
        raise ValueError(f"save_clip_vision: file_format must be 'safetensors' or 'bin', got {file_format!r}")
    _validate(state_dict, config, "save_clip_vision")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {**config.to_dict(), "architectures": ["CLIPVisionModel"]}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    tensors = {HF_PREFIX + key: tensor.detach().to("cpu").contiguous() for key, tensor in state_dict.items()}
    if file_format == "bin":
        target = folder / "pytorch_model.bin"
        torch.save(tensors, target)
    else:
        from safetensors.torch import save_file  # noqa: PLC0415

        target = folder / "model.safetensors"
        save_file(tensors, str(target), metadata={"format": "pt"})
    return target
