"""``MultiScaleCanvas``: multi-scale sliding-window encoding of a large canvas (docs/DESIGN_NOTES.md §1 steps 3–6).

Per image: resize to the canvas (official path: the normalised global tensor upsampled to ``canvas_size``), cut
overlapping windows per scale, encode all windows of a scale in one batched tower call keeping only the requested
hidden states, pool small windows to their token side, and blend the window grids onto a token canvas.

Paper configuration: canvas 672, base window 336, scales (1.0, 0.5) → 3×3 windows of 24 tokens and 7×7 windows of
12 tokens, layers (8, 16, 24), output ``[B, 2, 3, 48, 48, 1024]``.

The tower is any module with ``forward_intermediates(pixels, indices, stop_early=True) -> list[[B, N, C]]`` (CLS
dropped, HF hidden-state numbering), ``num_layers`` and ``config.patch_size`` (``rsfuse.encoders.CLIPVisionTower``).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.encoders.stitch import blend_weights, stitch_windows
from rsfuse.encoders.windows import WindowGrid, cut_windows, plan_window_grid, resize_to
from rsfuse.options import BLENDS, WINDOW_LAYOUTS, check_option

__all__ = ["MultiScaleCanvas"]


def _tower_patch_size(tower: nn.Module) -> int:
    config = getattr(tower, "config", None)
    patch = getattr(config, "patch_size", getattr(tower, "patch_size", None))
    if not isinstance(patch, int) or patch < 1:
        raise TypeError(f"MultiScaleCanvas: the tower must expose a positive int config.patch_size, found {patch!r}")
    return patch


def _tower_depth(tower: nn.Module) -> int:
    depth = getattr(tower, "num_layers", None)
    if not isinstance(depth, int) or depth < 1:
        raise TypeError(f"MultiScaleCanvas: the tower must expose a positive int num_layers, found {depth!r}")
    if not callable(getattr(tower, "forward_intermediates", None)):
        raise TypeError("MultiScaleCanvas: the tower must have forward_intermediates(pixels, indices, stop_early=True)")
    return depth


def _resolve_layers(layers: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """HF hidden-state indices (0 = embeddings, i = block i; negative counts from the end of the depth + 1 states)."""
    if len(layers) == 0:
        raise ValueError("MultiScaleCanvas: layers is empty; give at least one hidden-state index")
    resolved = []
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"MultiScaleCanvas: layer index {index!r} is not an int")
        absolute = index + depth + 1 if index < 0 else index
        if not 0 <= absolute <= depth:
            raise ValueError(
                f"MultiScaleCanvas: layer index {index} is outside the tower's hidden states 0..{depth} "
                f"(tower has {depth} blocks)"
            )
        resolved.append(absolute)
    if any(b <= a for a, b in zip(resolved, resolved[1:])):
        raise ValueError(f"MultiScaleCanvas: layers must be strictly ascending (resolved {tuple(resolved)})")
    return tuple(resolved)


class MultiScaleCanvas(nn.Module):
    """Encode ``pixels`` as overlapping windows at several scales and stitch each kept layer onto a token canvas.

    ``forward(pixels [B, C, H, W]) -> [B, S, L, T, T, D]`` with ``S`` scales (configured order), ``L`` layers
    (ascending), ``T = canvas_size / patch`` tokens per side, ``D`` the tower width.
    """

    def __init__(
        self,
        tower: nn.Module,
        *,
        canvas_size: int = 672,
        base_window: int = 336,
        window_scales: tuple[float, ...] = (1.0, 0.5),
        layers: tuple[int, ...] = (8, 16, 24),
        blend: str = "hann",
        window_layout: str = "spatial",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        patch = _tower_patch_size(tower)
        depth = _tower_depth(tower)
        check_option(blend, BLENDS, "MultiScaleCanvas: blend")
        check_option(window_layout, WINDOW_LAYOUTS, "MultiScaleCanvas: window_layout")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"MultiScaleCanvas: chunk_size must be a positive int or None, got {chunk_size!r}")
        if not isinstance(canvas_size, int) or canvas_size < 1 or canvas_size % patch:
            raise ValueError(f"MultiScaleCanvas: canvas_size {canvas_size!r} is not a positive multiple of the patch size {patch}")
        if not isinstance(base_window, int) or base_window < 1 or base_window % patch:
            raise ValueError(f"MultiScaleCanvas: base_window {base_window!r} is not a positive multiple of the patch size {patch}")
        if base_window > canvas_size:
            raise ValueError(f"MultiScaleCanvas: base_window {base_window} px is larger than the canvas ({canvas_size} px)")
        scales = tuple(window_scales)
        if len(scales) == 0:
            raise ValueError("MultiScaleCanvas: window_scales is empty; give at least one scale, e.g. (1.0, 0.5)")
        if len(set(scales)) != len(scales):
            raise ValueError(f"MultiScaleCanvas: window_scales {scales} has a duplicate scale")
        grids = tuple(
            plan_window_grid(scale=scale, canvas_size=canvas_size, base_window=base_window, patch_size=patch)
            for scale in scales
        )
        for grid in grids:
            if blend == "hann" and not bool((blend_weights(grid.token_side, blend) > 0).any()):
                raise ValueError(
                    f"MultiScaleCanvas: window scale {grid.scale} gives windows of {grid.token_side} tokens, whose Hann "
                    "weights are all zero; use a larger scale or blend='mean'"
                )
        self.tower = tower
        self.canvas_size = canvas_size
        self.base_window = base_window
        self.window_scales = scales
        self.layers = _resolve_layers(tuple(layers), depth)
        self.blend = blend
        self.window_layout = window_layout
        self.chunk_size = chunk_size
        self.patch_size = patch
        self.grids: tuple[WindowGrid, ...] = grids

    @property
    def canvas_tokens(self) -> int:
        """Tokens per side of the output canvas (48 in the paper)."""
        return self.canvas_size // self.patch_size

    @property
    def windows_per_side(self) -> tuple[int, ...]:
        """Windows per side for each scale, configured order ((3, 7) in the paper)."""
        return tuple(grid.per_side for grid in self.grids)

    @property
    def window_token_sides(self) -> tuple[int, ...]:
        """Token grid side of each scale's windows after pooling ((24, 12) in the paper)."""
        return tuple(grid.token_side for grid in self.grids)

    @property
    def windows_per_image(self) -> int:
        """Tower passes per image over all scales (9 + 49 = 58 in the paper)."""
        return sum(grid.num_windows for grid in self.grids)

    def output_shape(self, batch: int, dim: int) -> tuple[int, int, int, int, int, int]:
        """``(B, S, L, T, T, D)`` of ``forward`` for a batch of ``batch`` images and tower width ``dim``."""
        side = self.canvas_tokens
        return (batch, len(self.grids), len(self.layers), side, side, dim)

    def _encode(self, windows: Tensor, grid: WindowGrid) -> Tensor:
        """``[n, C, w, w]`` windows → ``[L, n, side, side, D]`` pooled token grids, one tower call."""
        hidden = self.tower.forward_intermediates(
            resize_to(windows, grid.base_window), list(self.layers), stop_early=True
        )
        if len(hidden) != len(self.layers):
            raise RuntimeError(
                f"MultiScaleCanvas: the tower returned {len(hidden)} hidden states for the {len(self.layers)} requested "
                f"indices {self.layers}"
            )
        tokens = hidden[0].shape[1]
        if tokens != grid.base_side**2:
            raise RuntimeError(
                f"MultiScaleCanvas: the tower returned {tokens} tokens per {grid.base_window}-px window, expected "
                f"{grid.base_side}² = {grid.base_side**2} (CLS dropped) at patch {self.patch_size}"
            )
        stacked = rearrange(torch.stack(hidden), "l n (h w) d -> l n h w d", h=grid.base_side)
        if grid.pool == 1:
            return stacked
        # Channels-last view: avg_pool2d's fast path (einops' reduce over split axes is ~10x slower on CPU).
        pooled = F.avg_pool2d(rearrange(stacked, "l n h w d -> (l n) d h w"), grid.pool)
        return rearrange(pooled, "(l n) d h w -> l n h w d", l=len(hidden))

    def _scale_canvas(self, canvas_pixels: Tensor, grid: WindowGrid) -> Tensor:
        """One scale: ``[B, C, P, P]`` pixels → ``[B, L, T, T, D]`` stitched token canvases."""
        windows = cut_windows(canvas_pixels, grid, layout=self.window_layout)
        chunks = windows.split(self.chunk_size) if self.chunk_size is not None else (windows,)
        encoded_chunks = [self._encode(chunk, grid) for chunk in chunks]
        encoded = encoded_chunks[0] if len(encoded_chunks) == 1 else torch.cat(encoded_chunks, dim=1)
        per_image = rearrange(encoded, "l (b k) h w d -> b l k h w d", b=canvas_pixels.shape[0])
        return stitch_windows(
            per_image,
            per_side=grid.per_side,
            stride=grid.stride_tokens,
            canvas_side=self.canvas_tokens,
            blend=self.blend,
        )

    @typecheck
    def forward(
        self, pixels: Float[Tensor, "batch channels height width"]
    ) -> Float[Tensor, "batch scales layers canvas canvas dim"]:
        """``pixels [B, C, H, W]`` (resized to the canvas unless already ``canvas_size``) → ``[B, S, L, T, T, D]``."""
        if pixels.shape[-1] != pixels.shape[-2]:
            raise ValueError(f"MultiScaleCanvas: pixels must be square, got {tuple(pixels.shape)}")
        canvas_pixels = resize_to(pixels, self.canvas_size)
        return torch.stack([self._scale_canvas(canvas_pixels, grid) for grid in self.grids], dim=1)
