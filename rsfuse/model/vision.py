"""MF-RSVLM's vision side as functions of its parts: the multi-scale canvas over a tower (`build_canvas`) and the
global features + detail stacks of a batch of images (`vision_features`). ``MFRSVLM`` runs them on its own modules;
a host that holds the same parts under the same names (the vLLM model of `rsfuse.vllm`) runs them too, so the
features are computed by one code."""

import torch
import torch.nn.functional as F

from rsfuse._typing import Tensor
from rsfuse.encoders.canvas import MultiScaleCanvas
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.fusion.sampler import DetailStackSampler
from rsfuse.model.config import MFRSVLMConfig

# Windows per tower call when a batch of images is encoded (``model.canvas.chunk_size``; None: all of one scale at
# once). On the CPU a call over every window of 16 images leaves the caches and costs 1.5-1.8x as much per image as
# calls of 128 (bench/encode_chunk.py); a GPU is still filled by 128 windows of 336 px (74k tokens per call). Rows
# are independent, so the features do not depend on it.
WINDOWS_PER_TOWER_CALL = 128

__all__ = ["WINDOWS_PER_TOWER_CALL", "build_canvas", "vision_features"]


def build_canvas(config: MFRSVLMConfig, tower: CLIPVisionTower) -> MultiScaleCanvas | None:
    """The multi-scale canvas over ``tower`` (None without detail). It owns no tensors; it is built on the CPU so that
    meta-device construction (checkpoint loading) keeps working."""
    if not config.detail:
        return None
    with torch.device("cpu"):
        return MultiScaleCanvas(
            tower,
            canvas_size=config.canvas_size,
            base_window=config.base_window,
            window_scales=config.window_scales,
            layers=config.detail_layers,
            blend=config.blend,
            window_layout=config.window_layout,
            chunk_size=WINDOWS_PER_TOWER_CALL,
        )


def vision_features(
    config: MFRSVLMConfig,
    tower: CLIPVisionTower,
    canvas: MultiScaleCanvas | None,
    sampler: DetailStackSampler,
    pixels: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Global features ``[B, N, C]`` and detail stacks ``[B, K, N, C]`` (None without a canvas) of normalised pixels,
    before the projector: what ``MFRSVLM.vision_features`` computes, for hosts that hold the same parts (the vLLM
    model of `rsfuse.vllm`)."""
    global_view = pixels
    if config.canvas_source == "image":
        size = config.global_size
        global_view = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    features = tower.forward_intermediates(global_view, [config.global_hidden_index])[0]
    if canvas is None:
        return features, None
    return features, sampler(canvas(pixels))
