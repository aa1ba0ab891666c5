"""``DetailStackSampler``: split token canvases by phase into position-aligned detail stacks (docs/DESIGN_NOTES.md §1.7)."""

from collections.abc import Sequence

from einops import rearrange
from torch import nn

from rsfuse._typing import Float, Tensor, typecheck

__all__ = ["DetailStackSampler"]


class DetailStackSampler(nn.Module):
    """``[B, S, L, Hc, Wc, C]`` canvases → ``[B, K, N, C]`` stacks, ``K = S·L·f²``, ``N = (Hc/f)·(Wc/f)``.

    Stack order: scale → layer → phase, phases r-major (``for r in range(f): for c in range(f): canvas[r::f, c::f]``).
    Paper: ``[B, 2, 3, 48, 48, 1024]`` → ``[B, 24, 576, 1024]``.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"DetailStackSampler: factor must be a positive int, got {factor!r}")
        self.factor = factor

    def num_stacks(self, scales: int, layers: int) -> int:
        """``K`` for ``scales`` × ``layers`` canvases."""
        return scales * layers * self.factor**2

    def stack_order(self, scales: Sequence[float], layers: Sequence[int]) -> list[tuple[float, int, int, int]]:
        """``(scale, layer, row phase, column phase)`` of each of the ``K`` stacks, in stack order."""
        phases = [(row, col) for row in range(self.factor) for col in range(self.factor)]
        return [(scale, layer, row, col) for scale in scales for layer in layers for row, col in phases]

    @typecheck
    def forward(
        self, canvas: Float[Tensor, "batch scales layers height width dim"]
    ) -> Float[Tensor, "batch stacks tokens dim"]:
        height, width = canvas.shape[3], canvas.shape[4]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"DetailStackSampler: canvas {tuple(canvas.shape)} has a {height}×{width} grid not divisible by "
                f"factor {self.factor}"
            )
        return rearrange(
            canvas, "b s l (h r) (w c) d -> b (s l r c) (h w) d", r=self.factor, c=self.factor
        )

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
