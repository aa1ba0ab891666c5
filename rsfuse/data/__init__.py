"""Data: image loading and CLIP preprocessing, LLaVA/VHM instruction datasets, collation and length-grouped sampling."""

from rsfuse.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    SAFE_FORMATS,
    load_image,
    open_image,
    stretch_to_uint8,
)
from rsfuse.data.preprocess import ImageProcessor
from rsfuse.data.instructions import (
    InstructionDataError,
    InstructionDataset,
    InstructionSample,
    collate,
    merge_turns_by_image,
)
from rsfuse.data.sampler import LengthGroupedSampler, length_grouped_indices

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "ImageProcessor",
    "InstructionDataError",
    "InstructionDataset",
    "InstructionSample",
    "LengthGroupedSampler",
    "collate",
    "length_grouped_indices",
    "load_image",
    "merge_turns_by_image",
    "open_image",
    "SAFE_FORMATS",
    "stretch_to_uint8",
]
