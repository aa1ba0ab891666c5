"""Stitching window token grids onto a token canvas with blend weights (docs/DESIGN_NOTES.md §1.6), as one ``fold`` per call.

``output = Σ_windows w · f / clamp(Σ_windows w, 1e-6)``, each window placed at (row · stride, col · stride) tokens.
With ``blend="hann"`` the weights are ``outer(h, h)``, ``h = torch.hann_window(side, periodic=False)``, which is zero on
a window's first and last rows/columns, so canvas rows/columns 0 and last come out exactly zero.
"""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.options import BLENDS, check_option

__all__ = ["BLENDS", "blend_weights", "stitch_windows"]

def blend_weights(side: int, blend: str, *, device: torch.device | None = None) -> Tensor:
    """``[side, side]`` float32 blend weights of one window."""
    check_option(blend, BLENDS, "blend")
    if blend == "hann":
        profile = torch.hann_window(side, periodic=False, dtype=torch.float32, device=device)
        return torch.outer(profile, profile)
    return torch.ones(side, side, dtype=torch.float32, device=device)


@typecheck
def stitch_windows(
    windows: Float[Tensor, "batch layers num_windows side side dim"],
    *,
    per_side: int,
    stride: int,
    canvas_side: int,
    blend: str,
) -> Float[Tensor, "batch layers canvas_side canvas_side dim"]:
    """Blend ``per_side²`` row-major window grids into a ``canvas_side²`` token canvas (accumulated in float32)."""
    batch, layers, num_windows, side, _, dim = windows.shape
    if num_windows != per_side * per_side:
        raise ValueError(f"stitch_windows: got {num_windows} windows, expected per_side² = {per_side * per_side}")
    fitting = (canvas_side - side) // stride + 1 if side <= canvas_side else 0
    if per_side != fitting:
        raise ValueError(
            f"stitch_windows: {per_side} windows per side of {side} tokens at stride {stride} do not tile a canvas of "
            f"{canvas_side} tokens ({fitting} fit)"
        )
    weights = blend_weights(side, blend, device=windows.device)
    placement = dict(output_size=(canvas_side, canvas_side), kernel_size=side, stride=stride)
    weighted = windows.float() * rearrange(weights, "h w -> h w 1")
    columns = rearrange(weighted, "b l k h w c -> (b l) (c h w) k")
    total = F.fold(columns, **placement)
    coverage = F.fold(repeat(weights, "h w -> 1 (h w) k", k=num_windows), **placement)
    canvas = total / coverage.clamp_min(1e-6)
    return rearrange(canvas, "(b l) c h w -> b l h w c", b=batch, l=layers).to(windows.dtype)
