"""``Router``: mix K detail stacks into one detail map, guided by the decoder's hidden states (docs/DESIGN_NOTES.md §1.10).

``mode="sample"`` (the reference): one weight vector per sample,
``q = query(mean_tokens(h))``, ``k_j = key(mean_tokens(D_j))``, ``w = softmax(q·k_j / √d)`` over the K stacks
(uniform for a sample whose weights are not all finite), ``mixed = Σ_j w_j D_j``.

``mode="token"``: each visual token attends over its own K stack entries (single head, ``rsfuse.ops.attention``):
query ``query(h_n)``, keys ``key(D_{j,n})``, values the raw ``D_{j,n}``; weights ``[B, N, K]``.

State-dict keys (a file format): ``query.0`` (LayerNorm), ``query.1`` (Linear d→d), ``key.0``, ``key.1``.
"""

import math

import torch
from einops import rearrange, reduce
from torch import nn

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.ops.attention import attention
from rsfuse.options import ATTENTION_BACKENDS, ROUTER_MODES, check_option

__all__ = ["Router", "ROUTER_MODES"]

def _norm_linear(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))


def check_stacks(hidden: Tensor, stacks: Tensor, dim: int, owner: str) -> None:
    """Raise a ValueError naming shapes unless ``hidden [B, N, dim]`` and ``stacks [B, K, N, dim]`` agree."""
    if hidden.ndim != 3 or hidden.shape[-1] != dim:
        raise ValueError(f"{owner}: hidden must be [B, N, {dim}], got {tuple(hidden.shape)}")
    if stacks.ndim != 4:
        raise ValueError(f"{owner}: stacks must be [B, K, N, D], got {tuple(stacks.shape)}")
    batch, tokens, _ = hidden.shape
    if stacks.shape[0] != batch or stacks.shape[2] != tokens or stacks.shape[3] != dim:
        raise ValueError(
            f"{owner}: stacks {tuple(stacks.shape)} do not match hidden {tuple(hidden.shape)}: expected "
            f"[{batch}, K, {tokens}, {dim}]"
        )
    if stacks.shape[1] < 1:
        raise ValueError(f"{owner}: stacks {tuple(stacks.shape)} hold no stack (K = 0)")


class Router(nn.Module):
    """``forward(hidden [B, N, D], stacks [B, K, N, D]) -> (mixed [B, N, D], weights)``.

    ``weights`` is ``[B, K]`` in sample mode and ``[B, N, K]`` in token mode; non-negative, summing to 1 over K.
    """

    def __init__(self, dim: int, *, mode: str = "sample", attention_backend: str = "auto") -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"Router: dim must be a positive int, got {dim!r}")
        check_option(mode, ROUTER_MODES, "Router: mode")
        check_option(attention_backend, ATTENTION_BACKENDS, "Router: attention_backend")
        self.dim = dim
        self.mode = mode
        self.attention_backend = attention_backend
        self.query = _norm_linear(dim)
        self.key = _norm_linear(dim)

    def _sample(self, hidden: Tensor, stacks: Tensor) -> tuple[Tensor, Tensor]:
        query = self.query(reduce(hidden, "b n d -> b d", "mean"))
        keys = self.key(reduce(stacks, "b k n d -> b k d", "mean"))
        scores = torch.einsum("bd,bkd->bk", query.float(), keys.float()) / math.sqrt(self.dim)
        weights = torch.softmax(scores, dim=-1)
        finite = torch.isfinite(weights).all(dim=-1, keepdim=True)
        weights = torch.where(finite, weights, 1.0 / stacks.shape[1])
        mixed = torch.einsum("bk,bknd->bnd", weights.to(stacks.dtype), stacks)
        return mixed, weights

    def _token(self, hidden: Tensor, stacks: Tensor) -> tuple[Tensor, Tensor]:
        query = self.query(hidden)
        keys = self.key(stacks)
        attended = attention(
            rearrange(query, "b n d -> (b n) 1 1 d"),
            rearrange(keys, "b k n d -> (b n) k 1 d"),
            rearrange(stacks, "b k n d -> (b n) k 1 d"),
            backend=self.attention_backend,
        )
        mixed = rearrange(attended, "(b n) 1 1 d -> b n d", b=hidden.shape[0])
        scores = torch.einsum("bnd,bknd->bnk", query.float(), keys.float()) / math.sqrt(self.dim)
        weights = torch.softmax(scores, dim=-1)
        finite = torch.isfinite(weights).all(dim=-1, keepdim=True)
        weights = torch.where(finite, weights, 1.0 / stacks.shape[1])
        mixed = torch.where(finite, mixed, reduce(stacks, "b k n d -> b n d", "mean"))
        return mixed, weights

    @typecheck
    def forward(
        self,
        hidden: Float[Tensor, "batch tokens dim"],
        stacks: Float[Tensor, "batch stacks stack_tokens stack_dim"],
    ) -> tuple[Float[Tensor, "batch tokens dim"], Float[Tensor, "batch *routing"]]:
        check_stacks(hidden, stacks, self.dim, "Router")
        if self.mode == "sample":
            return self._sample(hidden, stacks)
        return self._token(hidden, stacks)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}"
