"""The option values of rsfuse's configs and components, each written once, and the one check that refuses others.

Every setting that takes one of a fixed set of strings has here a ``typing.Literal`` alias (for annotations and
readers) and the tuple of its values (for checks and command-line ``choices``), the tuple derived from the alias:

========================  ==================  =========================================================================
setting                   tuple               used by
========================  ==================  =========================================================================
``attention_backend``     ATTENTION_BACKENDS  ``rsfuse.ops.attention``, ``CLIPVisionTower``, ``Router``, the config
``image_placement``       IMAGE_PLACEMENTS    ``MFRSVLMConfig``, the sequence layout, ``MFRSVLMProcessor``
``window_layout``         WINDOW_LAYOUTS      ``rsfuse.encoders.windows``, ``MultiScaleCanvas``, the config
``blend``                 BLENDS              ``rsfuse.encoders.stitch``, ``MultiScaleCanvas``, the config
``router_mode``           ROUTER_MODES        ``Router``, the config
``canvas_source``         CANVAS_SOURCES      the config
``padding_side``          PADDING_SIDES       the sequence layout, the processor, its collator, ``rsfuse.data.collate``
========================  ==================  =========================================================================

``DEFAULT_TEMPLATE`` is the conversation template used when none is given or recorded (the name of
``rsfuse.llm.templates.VICUNA_V1``).

This module imports nothing from torch or rsfuse: it sits at the bottom of the layering, beside ``rsfuse._typing``, so
that every layer (configs, components, processor, recipes, command-line parsers) imports its options from here.
"""

from collections.abc import Collection
from typing import Any, Literal, get_args

__all__ = [
    "Quantization",
    "QUANTIZATIONS",
    "AttentionBackend",
    "ImagePlacement",
    "WindowLayout",
    "Blend",
    "RouterMode",
    "CanvasSource",
    "PaddingSide",
    "ATTENTION_BACKENDS",
    "IMAGE_PLACEMENTS",
    "WINDOW_LAYOUTS",
    "BLENDS",
    "ROUTER_MODES",
    "CANVAS_SOURCES",
    "PADDING_SIDES",
    "DEFAULT_TEMPLATE",
    "check_option",
]

AttentionBackend = Literal["auto", "sdpa", "xformers", "math"]
"""``"auto"`` = xformers where its kernel runs on the tensors' device, else SDPA; ``"math"`` = float32 reference."""
ImagePlacement = Literal["prefix", "token"]
"""``"prefix"``: visual tokens before the whole text (MF-RSVLM); ``"token"``: at the ``<image>`` placeholder (LLaVA)."""
WindowLayout = Literal["spatial", "reference"]
"""``"spatial"``: true windows; ``"reference"``: the authors' memory reinterpretation (the released weights')."""
Blend = Literal["hann", "mean"]
"""Weights of overlapping window features on the canvas: 2-D Hann window, or uniform."""
RouterMode = Literal["sample", "token"]
"""One router weight vector per sample, or one per visual token."""
CanvasSource = Literal["upsampled", "image"]
"""The canvas is the global view resized up (official), or built from the original image."""
PaddingSide = Literal["left", "right"]
"""``"left"`` for generation (new tokens append after the prompt), ``"right"`` for training and scoring."""
Quantization = Literal["int8", "int4", "nf4"]
"""Weight-only schemes for the decoder's linear layers (``rsfuse.model.quantization``): torchao int8 / int4,
bitsandbytes NF4."""

ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
IMAGE_PLACEMENTS: tuple[str, ...] = get_args(ImagePlacement)
WINDOW_LAYOUTS: tuple[str, ...] = get_args(WindowLayout)
BLENDS: tuple[str, ...] = get_args(Blend)
ROUTER_MODES: tuple[str, ...] = get_args(RouterMode)
CANVAS_SOURCES: tuple[str, ...] = get_args(CanvasSource)
PADDING_SIDES: tuple[str, ...] = get_args(PaddingSide)
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)

DEFAULT_TEMPLATE = "vicuna_v1"


def check_option(value: Any, allowed: Collection[str], what: str) -> None:
    """Raise ``ValueError("<what> must be one of <allowed>, got <value>")`` unless ``value`` is one of ``allowed``.

    ``what`` names the setting as the caller's user wrote it (``"MFRSVLMConfig.blend"``, ``"Router: mode"``)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {tuple(allowed)}, got {value!r}")
