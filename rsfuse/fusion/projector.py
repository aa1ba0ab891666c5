"""``MLPProjector``: LLaVA's ``mlp2x_gelu`` vision-to-language projector (docs/DESIGN_NOTES.md §1.8)."""

from torch import nn

from rsfuse._typing import Float, Tensor, typecheck

__all__ = ["MLPProjector"]


class MLPProjector(nn.Sequential):
    """``Linear(in_dim, out_dim) → GELU → Linear(out_dim, out_dim)``; state-dict keys ``0.*`` and ``2.*``.

    Applies to any leading shape: ``[..., in_dim] → [..., out_dim]`` (global tokens ``[B, N, C]`` and stacks
    ``[B, K, N, C]`` alike).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPProjector: {name} must be a positive int, got {value!r}")
        super().__init__(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.in_dim = in_dim
        self.out_dim = out_dim

    @typecheck
    def forward(self, features: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"MLPProjector: expected features [..., {self.in_dim}], got {tuple(features.shape)}")
        return super().forward(features)
