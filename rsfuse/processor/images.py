"""What the processor accepts as an image: a PIL image, a file path (loaded by `rsfuse.data.load_image` when
preprocessed) or a numpy array (H×W, or H×W×C with C in 1, 3, 4; uint8 as is, floats in [0, 1] scaled, other
integers stretched to 8 bits as `load_image` does for deep files)."""

import os
from pathlib import Path
from typing import Any

import numpy as np

from rsfuse.data.images import stretch_to_uint8

__all__ = ["to_image"]


def to_image(image: Any, where: str):
    """``image`` as a PIL image or a path; ``ValueError`` naming ``where`` for anything else."""
    from PIL import Image  # noqa: PLC0415

    if isinstance(image, (str, os.PathLike)):
        return Path(image)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(
                f"{where}: an array must be H×W or H×W×C with C in (1, 3, 4), got shape {tuple(image.shape)}"
            )
        if min(array.shape[:2]) < 1:
            raise ValueError(f"{where}: empty image of shape {tuple(image.shape)}")
        if array.dtype == np.uint8:
            pass
        elif np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError(f"{where}: the float image holds NaN or inf")
            low, high = float(array.min()), float(array.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(f"{where}: float images must hold values in [0, 1], got [{low:g}, {high:g}]")
            array = np.rint(array * 255.0).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.integer):
            array = stretch_to_uint8(array)  # as load_image does for > 8-bit files
        else:
            raise ValueError(f"{where}: arrays of dtype {array.dtype} are not images (uint8, integer or float)")
        return Image.fromarray(np.ascontiguousarray(array))
    raise ValueError(
        f"{where}: expected a PIL image, a numpy array (H×W×C uint8, or float in [0, 1]), a file path or None; "
        f"got {type(image).__name__}"
    )
