"""``CLIPVisionConfig``: the shape of a CLIP vision tower, with Hugging Face's field names.

This module imports no torch modules, so the pure checkpoint readers in ``rsfuse.checkpoints`` can use it.
Defaults equal ``transformers.CLIPVisionConfig``'s, because HF ``save_pretrained`` omits fields that keep their default.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["CLIPVisionConfig", "PAPER_DETAIL_FRACTIONS", "SUPPORTED_ACTIVATIONS", "detail_layers_from_fractions"]

PAPER_DETAIL_FRACTIONS = (0.33, 0.66, 1.0)
"""The detail layers as fractions of the tower depth (the released config's ``deepstack_detail_layers``)."""


def detail_layers_from_fractions(fractions, depth: int) -> tuple[int, ...]:
    """Tower hidden-state indices from depth fractions: ``round(f × depth)`` clamped to ``[1, depth]``
    ([0.33, 0.66, 1.0] of 24 → 8, 16, 24)."""
    return tuple(min(depth, max(1, round(float(fraction) * depth))) for fraction in fractions)

SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")

_INT_FIELDS = (
    "image_size",
    "patch_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
)


@dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
    """A pre-LayerNorm ViT as in HF ``CLIPVisionModel``; field names and defaults are HF's (ViT-B/32 at 224 px)."""

    image_size: int = 224
    patch_size: int = 32
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    num_channels: int = 3

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CLIPVisionConfig.{name} must be a positive int, got {value!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"CLIPVisionConfig.layer_norm_eps must be a positive number, got {eps!r}")
        object.__setattr__(self, "layer_norm_eps", float(eps))
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"CLIPVisionConfig.hidden_act must be one of {SUPPORTED_ACTIVATIONS}, got {self.hidden_act!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"CLIPVisionConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"CLIPVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )

    # ----- derived sizes -------------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per side at the native resolution (24 for ViT-L/14 at 336)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_positions(self) -> int:
        """Rows of the position-embedding table: patches plus the CLS position."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ----- presets -------------------------------------------------------------------------------------------------
    @classmethod
    def vit_l14_336(cls) -> "CLIPVisionConfig":
        """OpenAI CLIP ViT-L/14 at 336 px (``openai/clip-vit-large-patch14-336``), the paper's tower."""
        return cls(
            image_size=336,
            patch_size=14,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )

    @classmethod
    def tiny(cls) -> "CLIPVisionConfig":
        """A CPU-sized tower for tests: 112 px, patch 14 (8×8 grid), width 64, 6 blocks, 4 heads, MLP 256."""
        return cls(
            image_size=112,
            patch_size=14,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )

    # ----- dict round trip -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """HF-compatible vision config dict (``model_type`` "clip_vision_model"), readable by ``from_dict``."""
        return {"model_type": "clip_vision_model", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, key_prefix: str = "") -> "CLIPVisionConfig":
        """Build from a vision-only HF config dict or a full CLIP ``config.json`` (read from ``vision_config``).

        Unknown keys are ignored; missing fields take HF's defaults; a field of the wrong type or range (a size or
        count that is not a positive int: a string, a float, a list, a bool) raises a ValueError naming its key as
        it appears in the file, prefixed with ``key_prefix`` (e.g. ``"vision."``).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"CLIPVisionConfig.from_dict expects a mapping, got {type(data).__name__}")
        if "vision_config" in data:
            vision = data["vision_config"]
            if not isinstance(vision, Mapping):
                raise ValueError(
                    f"CLIPVisionConfig field '{key_prefix}vision_config' must be an object, got {type(vision).__name__}"
                )
            data, key_prefix = vision, key_prefix + "vision_config."
        elif data.get("model_type") == "clip":
            raise ValueError("full CLIP config (model_type 'clip') has no 'vision_config' entry")
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        _check_fields(values, key_prefix)
        return cls(**values)


def _check_fields(values: Mapping[str, Any], prefix: str) -> None:
    """A ValueError naming the first field (``prefix`` + its key) of the wrong type or range."""

    def refuse(name: str, requirement: str) -> ValueError:
        return ValueError(f"CLIPVisionConfig field '{prefix}{name}' {requirement}, got {values[name]!r}")

    for name in _INT_FIELDS:
        value = values.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise refuse(name, "must be a positive int")
    eps = values.get("layer_norm_eps", 1.0)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise refuse("layer_norm_eps", "must be a positive number")
    if values.get("hidden_act", SUPPORTED_ACTIVATIONS[0]) not in SUPPORTED_ACTIVATIONS:
        raise refuse("hidden_act", f"must be one of {SUPPORTED_ACTIVATIONS}")
