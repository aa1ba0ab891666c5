"""``GatedInjector``: add a gated, projected detail map to the decoder's visual hidden states (docs/DESIGN_NOTES.md §1.10).

``hn = LN_h(h)``, ``dn = LN_d(detail)``, ``g = sigmoid(gate_proj(cat[hn, dn]))`` (per token and channel),
``out = h + s · g ⊙ detail_proj(dn)`` with ``s`` the learnable ``residual_scale``. With a router, ``detail`` is the
``[B, K, N, D]`` stack set and is mixed first. ``residual_scale_init=0.0`` returns ``hidden`` unchanged at initialisation.

State-dict keys (a file format): ``hidden_norm.*``, ``detail_norm.*``, ``detail_proj.*``, ``gate_proj.*`` (Linear 2d→d),
``residual_scale`` (shape ``[1]``), and ``router.query.{0,1}.*``, ``router.key.{0,1}.*`` with a router.
"""

import torch
from einops import reduce
from torch import nn

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.injection.router import Router, check_stacks

__all__ = ["GatedInjector"]


class GatedInjector(nn.Module):
    """``forward(hidden [B, N, D], detail [B, N, D] or [B, K, N, D] with a router) -> [B, N, D]``.

    ``forward_with_stats`` also returns what the injection did, for visualisation: the gate averaged over channels
    ``[B, N]`` and the router's weights (``[B, K]``, ``[B, N, K]`` for a token router, None without a router).
    """

    def __init__(self, dim: int, *, router: Router | None = None, residual_scale_init: float = 1.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"GatedInjector: dim must be a positive int, got {dim!r}")
        if router is not None and router.dim != dim:
            raise ValueError(f"GatedInjector: router.dim {router.dim} differs from the injector's dim {dim}")
        self.dim = dim
        self.hidden_norm = nn.LayerNorm(dim)
        self.detail_norm = nn.LayerNorm(dim)
        self.detail_proj = nn.Linear(dim, dim)
        self.gate_proj = nn.Linear(2 * dim, dim)
        self.residual_scale = nn.Parameter(torch.full((1,), float(residual_scale_init)))
        self.router = router

    @torch.no_grad()
    def set_residual_scale(self, value: float | Tensor) -> None:
        """Set ``s`` from a float or a one-element tensor (e.g. a slice of a checkpoint's per-layer scale vector)."""
        value = torch.as_tensor(value, dtype=self.residual_scale.dtype)
        if value.numel() != 1:
            raise ValueError(f"GatedInjector.set_residual_scale: expected one value, got shape {tuple(value.shape)}")
        self.residual_scale.copy_(value.reshape(1).to(self.residual_scale.device))

    def _mixed_detail(self, hidden: Tensor, detail: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.router is None:
            if detail.shape != hidden.shape:
                hint = "; [B, K, N, D] stacks need a router" if detail.ndim == 4 else ""
                raise ValueError(
                    f"GatedInjector: detail {tuple(detail.shape)} must match hidden {tuple(hidden.shape)}{hint}"
                )
            return detail, None
        if detail.ndim != 4:
            raise ValueError(
                f"GatedInjector: with a router, detail must be stacks [B, K, N, D], got {tuple(detail.shape)}"
            )
        check_stacks(hidden, detail, self.dim, "GatedInjector")
        return self.router(hidden, detail)

    @typecheck
    def forward(
        self,
        hidden: Float[Tensor, "batch tokens dim"],
        detail: Float[Tensor, "batch *detail_dims"],
        *,
        return_stats: bool = False,
    ) -> Float[Tensor, "batch tokens dim"] | tuple[Float[Tensor, "batch tokens dim"], Float[Tensor, "batch tokens"], Tensor | None]:
        """The injected hidden states; with ``return_stats``, also the gate mean over channels and the router's
        weights (see ``forward_with_stats``)."""
        if hidden.shape[-1] != self.dim:
            raise ValueError(f"GatedInjector: hidden must be [B, N, {self.dim}], got {tuple(hidden.shape)}")
        mixed, weights = self._mixed_detail(hidden, detail)
        hidden_normed = self.hidden_norm(hidden)
        detail_normed = self.detail_norm(mixed.to(hidden.dtype))
        gate = torch.sigmoid(self.gate_proj(torch.cat([hidden_normed, detail_normed], dim=-1)))
        injected = hidden + self.residual_scale * gate * self.detail_proj(detail_normed)
        if not return_stats:
            return injected
        return injected, reduce(gate, "b n d -> b n", "mean"), weights

    def forward_with_stats(self, hidden: Tensor, detail: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(injected [B, N, D], gate mean over channels [B, N], router weights or None)``. Goes through
        ``__call__``, so module hooks (e.g. FSDP's parameter unsharding) run as for ``injector(hidden, detail)``."""
        return self(hidden, detail, return_stats=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
