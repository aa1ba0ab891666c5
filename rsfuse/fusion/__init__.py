"""Fusion components: detail-stack sampling of token canvases and the vision-to-language projector."""

from rsfuse.fusion.projector import MLPProjector
from rsfuse.fusion.sampler import DetailStackSampler

__all__ = ["DetailStackSampler", "MLPProjector"]
