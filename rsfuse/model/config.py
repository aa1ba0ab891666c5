"""``MFRSVLMConfig``: everything that fixes the shape and wiring of an MF-RSVLM model.

Sizes of the views are derived from the vision tower (docs/DESIGN_NOTES.md §3): global view = ``image_size``, canvas =
``2 × image_size``, base window = ``image_size``. Injection layers are 1-based, as the authors publish them
(``[2, 4, 6, 8]`` = before 0-based decoder layers 1, 3, 5, 7). This module imports no torch modules.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from rsfuse.encoders.clip_config import PAPER_DETAIL_FRACTIONS, CLIPVisionConfig, detail_layers_from_fractions
from rsfuse.llm.config import LlamaConfig
from rsfuse.options import (
    ATTENTION_BACKENDS,
    BLENDS,
    CANVAS_SOURCES,
    IMAGE_PLACEMENTS,
    ROUTER_MODES,
    WINDOW_LAYOUTS,
    check_option,
)

__all__ = ["MFRSVLMConfig", "detail_layers_from_fractions", "PAPER_DETAIL_FRACTIONS", "PRESETS"]

# The option tuples (defined in rsfuse.options) checked by the config, by field.
CHOICES: dict[str, tuple[str, ...]] = {
    "canvas_source": CANVAS_SOURCES,
    "image_placement": IMAGE_PLACEMENTS,
    "window_layout": WINDOW_LAYOUTS,
    "blend": BLENDS,
    "router_mode": ROUTER_MODES,
    "attention_backend": ATTENTION_BACKENDS,
}


def _positive_int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, float)) or not hasattr(values, "__iter__"):
        raise ValueError(f"MFRSVLMConfig.{name} must be a list of ints, got {values!r}")
    values = tuple(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"MFRSVLMConfig.{name} must hold positive ints, got {value!r} in {list(values)}")
    return values


@dataclass(kw_only=True)
class MFRSVLMConfig:
    """MF-RSVLM: CLIP tower + multi-scale canvas + detail stacks + shared projector + Llama with gated injectors.

    ``detail_layers`` are tower hidden-state indices (HF ``output_hidden_states`` numbering); left as None they are
    derived from ``PAPER_DETAIL_FRACTIONS``. ``global_layer`` uses the same numbering; negative values count from the
    end (−2 = LLaVA-1.5's choice). ``detail=False`` is the plain LLaVA-1.5 baseline (no canvas, no injectors).
    ``image_token_index`` is the image placeholder in ``input_ids``: −200 (outside the vocabulary, the original LLaVA
    convention), or an in-vocabulary id such as llava-hf's ``<image>`` (32000), which its processor repeats once per
    visual token.
    """

    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig.vit_l14_336)
    llm: LlamaConfig = field(default_factory=LlamaConfig.vicuna_7b)
    global_layer: int = 24
    detail_layers: tuple[int, ...] | None = None
    window_scales: tuple[float, ...] = (1.0, 0.5)
    stack_factor: int = 2
    injection_layers: tuple[int, ...] = (2, 4, 6, 8)
    canvas_source: str = "upsampled"
    image_placement: str = "prefix"
    window_layout: str = "spatial"
    blend: str = "hann"
    residual_scale_init: float = 1.0
    router_mode: str = "sample"
    detail: bool = True
    image_token_index: int = -200
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.vision, Mapping):
            self.vision = CLIPVisionConfig.from_dict(self.vision)
        if isinstance(self.llm, Mapping):
            self.llm = LlamaConfig.from_dict(dict(self.llm))
        if not isinstance(self.vision, CLIPVisionConfig):
            raise ValueError(f"MFRSVLMConfig.vision must be a CLIPVisionConfig, got {type(self.vision).__name__}")
        if not isinstance(self.llm, LlamaConfig):
            raise ValueError(f"MFRSVLMConfig.llm must be a LlamaConfig, got {type(self.llm).__name__}")
        depth = self.vision.num_hidden_layers
        if isinstance(self.global_layer, bool) or not isinstance(self.global_layer, int):
            raise ValueError(f"MFRSVLMConfig.global_layer must be an int, got {self.global_layer!r}")
        if not -(depth + 1) <= self.global_layer <= depth:
            raise ValueError(
                f"MFRSVLMConfig.global_layer {self.global_layer} is out of range for a {depth}-block vision tower "
                f"(hidden-state indices 0..{depth}, or negative from the end)"
            )
        if self.detail_layers is None:
            self.detail_layers = detail_layers_from_fractions(PAPER_DETAIL_FRACTIONS, depth)
        self.detail_layers = _positive_int_tuple("detail_layers", self.detail_layers)
        for layer in self.detail_layers:
            if layer > depth:
                raise ValueError(
                    f"MFRSVLMConfig.detail_layers: hidden state {layer} does not exist in a {depth}-block vision tower"
                )
        if list(self.detail_layers) != sorted(set(self.detail_layers)):
            raise ValueError(f"MFRSVLMConfig.detail_layers must be strictly ascending, got {list(self.detail_layers)}")
        scales = tuple(self.window_scales)
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1 for s in scales):
            raise ValueError(f"MFRSVLMConfig.window_scales must be numbers in (0, 1], got {list(scales)}")
        self.window_scales = tuple(float(s) for s in scales)
        if isinstance(self.stack_factor, bool) or not isinstance(self.stack_factor, int) or self.stack_factor <= 0:
            raise ValueError(f"MFRSVLMConfig.stack_factor must be a positive int, got {self.stack_factor!r}")
        canvas_tokens = 2 * self.vision.grid_size
        if canvas_tokens % self.stack_factor or (canvas_tokens // self.stack_factor) != self.vision.grid_size:
            raise ValueError(
                f"MFRSVLMConfig.stack_factor {self.stack_factor}: a {canvas_tokens}×{canvas_tokens}-token canvas must "
                f"split into {self.vision.grid_size}×{self.vision.grid_size} stacks aligned with the global tokens "
                "(only stack_factor=2 does that for a canvas of twice the image size)"
            )
        self.injection_layers = _positive_int_tuple("injection_layers", self.injection_layers)
        for layer in self.injection_layers:
            if layer > self.llm.num_hidden_layers:
                raise ValueError(
                    f"MFRSVLMConfig.injection_layers: layer {layer} (1-based) does not exist in a "
                    f"{self.llm.num_hidden_layers}-layer decoder"
                )
        if list(self.injection_layers) != sorted(set(self.injection_layers)):
            raise ValueError(
                f"MFRSVLMConfig.injection_layers must be strictly ascending, got {list(self.injection_layers)}"
            )
        if self.detail and not self.injection_layers:
            raise ValueError("MFRSVLMConfig.injection_layers is empty; set detail=False for a model without injection")
        for name, choices in CHOICES.items():
            check_option(getattr(self, name), choices, f"MFRSVLMConfig.{name}")
        if isinstance(self.residual_scale_init, bool) or not isinstance(self.residual_scale_init, (int, float)):
            raise ValueError(f"MFRSVLMConfig.residual_scale_init must be a number, got {self.residual_scale_init!r}")
        self.residual_scale_init = float(self.residual_scale_init)
        if not isinstance(self.detail, bool):
            raise ValueError(f"MFRSVLMConfig.detail must be a bool, got {self.detail!r}")
        if isinstance(self.image_token_index, bool) or not isinstance(self.image_token_index, int):
            raise ValueError(f"MFRSVLMConfig.image_token_index must be an int, got {self.image_token_index!r}")
        if self.image_token_index >= self.llm.vocab_size:
            raise ValueError(
                f"MFRSVLMConfig.image_token_index must be negative (a placeholder outside the vocabulary, LLaVA's -200) "
                f"or an in-vocabulary id below vocab_size {self.llm.vocab_size} (llava-hf's <image>), "
                f"got {self.image_token_index}"
            )

    # ----- derived sizes -------------------------------------------------------------------------------------------
    @property
    def global_size(self) -> int:
        """Side of the global view in pixels (the tower's ``image_size``)."""
        return self.vision.image_size

    @property
    def canvas_size(self) -> int:
        return 2 * self.vision.image_size

    @property
    def base_window(self) -> int:
        return self.vision.image_size

    @property
    def input_size(self) -> int:
        """Side of ``pixel_values`` the model expects: the canvas for ``canvas_source="image"``, else the global view."""
        return self.canvas_size if self.canvas_source == "image" else self.global_size

    @property
    def num_visual_tokens(self) -> int:
        return self.vision.num_patches

    @property
    def global_hidden_index(self) -> int:
        """``global_layer`` as a non-negative hidden-state index."""
        depth = self.vision.num_hidden_layers
        return self.global_layer if self.global_layer >= 0 else depth + 1 + self.global_layer

    @property
    def num_stacks(self) -> int:
        return len(self.window_scales) * len(self.detail_layers) * self.stack_factor**2

    @property
    def injection_layer_indices(self) -> tuple[int, ...]:
        """0-based decoder layer indices of the injectors (empty when ``detail`` is off)."""
        return tuple(layer - 1 for layer in self.injection_layers) if self.detail else ()

    # ----- presets -------------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> "MFRSVLMConfig":
        """MF-RSVLM-7B as published: CLIP ViT-L/14-336 + Vicuna-7B-v1.5, hidden states 24 / 8, 16, 24, scales
        (1.0, 0.5), injection before layers [2, 4, 6, 8] (1-based), Hann blending, residual scale 1.0."""
        return cls(vision=CLIPVisionConfig.vit_l14_336(), llm=LlamaConfig.vicuna_7b(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "MFRSVLMConfig":
        """CPU-sized: 112-px 6-block tower (8×8 tokens), 4-layer decoder, injection before layers [2, 4] (1-based)."""
        values: dict[str, Any] = {
            "vision": CLIPVisionConfig.tiny(),
            "llm": LlamaConfig.tiny(),
            "global_layer": 6,
            "injection_layers": (2, 4),
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def tiny_cpu(cls) -> "MFRSVLMConfig":
        """The embedded default's model (``python recipes/mf_rsvlm_train.py``): `tiny` with a narrow 4-block tower
        (width 32, 2 heads), the faithful two-scale canvas over the real 224-px image (``canvas_source="image"``: the
        synthetic images are exactly the canvas size; 3×3 windows at scale 1.0 plus 7×7 windows of 56 px upsampled to
        112 at scale 0.5, which magnifies small objects 2×: 59 tower passes per image), detail from hidden states 1
        and 2 only (the 58 window passes stop after block 2; the global view uses block 4) and a 128-wide decoder, so
        a from-scratch run fits in about ten minutes on two CPU cores (BENCHMARKS.md, "Embedded default")."""
        return cls.tiny().with_overrides({
            "vision.hidden_size": 32,
            "vision.intermediate_size": 128,
            "vision.num_attention_heads": 2,
            "vision.num_hidden_layers": 4,
            "global_layer": 4,
            "detail_layers": [1, 2],
            "window_scales": [1.0, 0.5],
            "canvas_source": "image",
            "llm.hidden_size": 128,
            "llm.intermediate_size": 256,
        })

    @classmethod
    def synthetic_study(cls) -> "MFRSVLMConfig":
        """The synthetic ablation study's model (``studies/ablate_synthetic``): `tiny` with a tower of width 64 and
        3 blocks (8×8 tokens), global view from its last block, detail from hidden states 1, 2, 3 (= 1/3, 2/3, last)
        and the canvas built from the image's real 224 pixels."""
        return cls.tiny().with_overrides({
            "vision.hidden_size": 64,
            "vision.intermediate_size": 256,
            "vision.num_hidden_layers": 3,
            "vision.num_attention_heads": 4,
            "global_layer": 3,
            "detail_layers": [1, 2, 3],
            "canvas_source": "image",
        })

    @classmethod
    def preset(cls, name: str) -> "MFRSVLMConfig":
        """The named preset (a key of `PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown MFRSVLMConfig preset {name!r} (known: {', '.join(PRESETS)})")
        return getattr(cls, PRESETS[name])()

    def with_overrides(self, dotted: Mapping[str, Any]) -> "MFRSVLMConfig":
        """A new config: this one's `to_dict` with each dotted key (``"llm.hidden_size"``) replaced, read back by
        `from_dict` (so derived fields are derived again and every value is checked)."""
        data = self.to_dict()
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return type(self).from_dict(data)

    # ----- dict round trip -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``vision`` and ``llm`` are HF-style sub-configs."""
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "vision":
                value = value.to_dict()
            elif item.name == "llm":
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MFRSVLMConfig":
        """Inverse of ``to_dict``; unknown keys are refused, naming them. A field of the wrong type or range (a
        string, float, list or bool where an int is due, ...) raises a ValueError naming its key as written in the
        file (``global_layer``, ``llm.hidden_size``, ``vision.num_attention_heads``)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"MFRSVLMConfig.from_dict expects a mapping, got {type(data).__name__}")
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"model_type", "architectures", "rsfuse_version"})
        if unknown:
            raise ValueError(f"MFRSVLMConfig.from_dict: unknown field(s) {unknown}")
        values = {key: value for key, value in data.items() if key in names}
        for key in ("vision", "llm"):
            if key in values and not isinstance(values[key], Mapping):
                raise ValueError(f"MFRSVLMConfig field {key!r} must be an object, got {type(values[key]).__name__}")
        _check_fields(values)
        if "vision" in values:
            values["vision"] = CLIPVisionConfig.from_dict(values["vision"], key_prefix="vision.")
        if "llm" in values:
            llm = {k: v for k, v in values["llm"].items() if k not in ("model_type", "architectures")}
            values["llm"] = LlamaConfig.from_dict(llm, key_prefix="llm.")
        for key in ("detail_layers", "window_scales", "injection_layers"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(values: Mapping[str, Any]) -> None:
    """A ValueError naming the first top-level field of ``from_dict``'s input with the wrong type or range."""

    def refuse(key: str, requirement: str) -> ValueError:
        return ValueError(f"MFRSVLMConfig field {key!r} {requirement}, got {values[key]!r}")

    for key in ("global_layer", "image_token_index"):
        if key in values and not _is_int(values[key]):
            raise refuse(key, "must be an int")
    if "stack_factor" in values and not (_is_int(values["stack_factor"]) and values["stack_factor"] > 0):
        raise refuse("stack_factor", "must be a positive int")
    for key in ("detail_layers", "injection_layers"):
        if key not in values or (key == "detail_layers" and values[key] is None):
            continue
        items = values[key]
        if not isinstance(items, (list, tuple)) or not all(_is_int(item) and item > 0 for item in items):
            raise refuse(key, "must be a list of positive ints")
    if "window_scales" in values:
        scales = values["window_scales"]
        if not isinstance(scales, (list, tuple)) or not scales or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1 for s in scales
        ):
            raise refuse("window_scales", "must be a non-empty list of numbers in (0, 1]")
    if "residual_scale_init" in values:
        scale = values["residual_scale_init"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise refuse("residual_scale_init", "must be a finite number")
    if "detail" in values and not isinstance(values["detail"], bool):
        raise refuse("detail", "must be true or false")
    for key, choices in CHOICES.items():
        if key in values and (not isinstance(values[key], str) or values[key] not in choices):
            raise refuse(key, f"must be one of {choices}")

PRESETS: dict[str, str] = {"tiny_cpu": "tiny_cpu", "tiny": "tiny", "paper": "paper", "synthetic_study": "synthetic_study"}
"""Preset name → the `MFRSVLMConfig` classmethod that builds it (the training recipe's ``model.preset``)."""
