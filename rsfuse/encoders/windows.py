"""Window grids of the multi-scale canvas: planning (with validation) and cutting, without Python loops over windows.

A *window grid* is one scale of docs/DESIGN_NOTES.md §1.4: square windows of ``base_window · scale`` pixels cut from the canvas with a
stride of half a window, ``per_side × per_side`` windows in row-major order. Each window is encoded at ``base_window``
pixels (upsampled when smaller), giving ``base_side = base_window / patch`` tokens per side, then average-pooled down to
``token_side`` tokens per side, a divisor of ``base_side``.
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.options import WINDOW_LAYOUTS, check_option

__all__ = ["WINDOW_LAYOUTS", "WindowGrid", "cut_windows", "plan_window_grid", "resize_to"]

@dataclass(frozen=True)
class WindowGrid:
    """Geometry of one window scale, in pixels and in tokens."""

    scale: float
    window_pixels: int
    stride_pixels: int
    per_side: int
    token_side: int
    stride_tokens: int
    base_window: int
    base_side: int

    @property
    def num_windows(self) -> int:
        """Windows per image: ``per_side ** 2``."""
        return self.per_side * self.per_side

    @property
    def pool(self) -> int:
        """Average-pool factor from the encoded ``base_side`` grid down to ``token_side``."""
        return self.base_side // self.token_side


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def plan_window_grid(*, scale: float, canvas_size: int, base_window: int, patch_size: int) -> WindowGrid:
    """Validate one window scale and return its geometry; every error message names the offending value."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0.0 < scale <= 1.0):
        raise ValueError(f"window scale must be a number in (0, 1], got {scale!r}")
    raw_window = base_window * scale
    window_pixels = round(raw_window)
    if abs(raw_window - window_pixels) > 1e-6:
        raise ValueError(
            f"window scale {scale} gives a window of {raw_window} px (base_window {base_window} × {scale}), not a whole "
            "number of pixels"
        )
    if window_pixels > canvas_size:
        raise ValueError(f"window scale {scale}: window of {window_pixels} px is larger than the canvas ({canvas_size} px)")
    base_side = base_window // patch_size
    raw_side = base_side * scale
    token_side = min(_divisors(base_side), key=lambda d: (abs(d - raw_side), -d))
    if window_pixels != token_side * patch_size:
        raise ValueError(
            f"window scale {scale}: a window of {window_pixels} px does not snap to the patch grid: the nearest divisor "
            f"of the base token side {base_side} is {token_side} tokens = {token_side * patch_size} px at patch {patch_size}"
        )
    stride_pixels = window_pixels // 2
    stride_tokens = token_side // 2
    if stride_tokens < 1 or stride_pixels != stride_tokens * patch_size:
        raise ValueError(
            f"window scale {scale}: token side {token_side} gives a stride of {stride_tokens} tokens, which does not match "
            f"the pixel stride {stride_pixels} px at patch {patch_size} (the token side must be even and at least 2)"
        )
    per_side = (canvas_size - window_pixels) // stride_pixels + 1
    return WindowGrid(
        scale=float(scale),
        window_pixels=window_pixels,
        stride_pixels=stride_pixels,
        per_side=per_side,
        token_side=token_side,
        stride_tokens=stride_tokens,
        base_window=base_window,
        base_side=base_side,
    )


@typecheck
def cut_windows(
    canvas: Float[Tensor, "batch channels height width"], grid: WindowGrid, *, layout: str
) -> Float[Tensor, "batch_windows channels window window"]:
    """All windows of ``grid`` as one batch ``[B·n·n, C, w, w]``, sample-major, windows row-major within a sample.

    ``layout="spatial"``: window k of a sample is the true window at (k // n, k % n).
    ``layout="reference"``: the authors' memory reinterpretation (docs/DESIGN_NOTES.md §1.4): the ``[B, C, n, n, w, w]`` unfold is
    viewed as ``[B·n·n, C, w, w]`` without moving the channel axis, so window k's C planes are the planes
    ``k·C … k·C + C − 1`` of that sample in (channel, row, col) order.
    """
    check_option(layout, WINDOW_LAYOUTS, "window_layout")
    size, step = grid.window_pixels, grid.stride_pixels
    patches = canvas.unfold(2, size, step).unfold(3, size, step)  # [B, C, n, n, w, w]
    if layout == "spatial":
        return rearrange(patches, "b c nh nw h w -> (b nh nw) c h w")
    planes = rearrange(patches, "b c nh nw h w -> b (c nh nw) h w")
    return rearrange(planes, "b (k c) h w -> (b k) c h w", c=canvas.shape[1])


@typecheck
def resize_to(
    images: Float[Tensor, "batch channels height width"], size: int
) -> Float[Tensor, "batch channels size_out size_out"]:
    """Bilinear resize (``align_corners=False``) to ``size × size``; identity when already that size.

    Channels are resized as independent one-channel images (the same interpolation; on CPU the one-channel kernel is
    3-4x faster than the three-channel NCHW one and needs no layout copies).
    """
    if images.shape[-2] == size and images.shape[-1] == size:
        return images
    planes = rearrange(images, "b c h w -> (b c) 1 h w")
    resized = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False)
    return rearrange(resized, "(b c) 1 h w -> b c h w", c=images.shape[1])
