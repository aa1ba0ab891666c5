"""Llama building blocks with HF's parameter names: RMSNorm, SwiGLU MLP, grouped-query attention, decoder layer.

A decoder layer is called as ``layer(hidden_states, position_embeddings=(cos, sin), attention_mask=AttentionMask,
position_ids=..., cache=...)``: hidden states come first and positional, so forward pre-hooks (``rsfuse.injection.graft``)
can replace them. The mask is built once per model forward (``AttentionMask``) and shared by all layers.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rsfuse._typing import Bool, Float, Int, Tensor, typecheck
from rsfuse.llm.cache import CacheWrite, KVCache
from rsfuse.llm.config import LlamaConfig
from rsfuse.llm.rope import apply_rotary
from rsfuse.ops.attention import attention, attention_weights

__all__ = ["AttentionMask", "RMSNorm", "LlamaMLP", "LlamaAttention", "LlamaDecoderLayer"]


@dataclass(frozen=True)
class AttentionMask:
    """What every layer's attention needs: a boolean ``[B, 1, M, N]`` mask (True = may attend), or None with
    ``causal=True`` for the plain causal case (SDPA's built-in causal kernel, no mask tensor)."""

    mask: Bool[Tensor, "#batch 1 queries keys"] | None
    causal: bool
    all_rows_attend: bool = False
    """True when every query row may attend to some key (a decoding step sees itself): no empty-row fix-up."""


class RMSNorm(nn.Module):
    """``weight · x / sqrt(mean(x²) + eps)``, normalised in float32 and cast back before the weight, like HF."""

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    @typecheck
    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        normalised = F.rms_norm(x.float(), (x.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normalised.to(x.dtype)


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) · up(x))``."""

    def __init__(self, *, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    @typecheck
    def forward(self, x: Float[Tensor, "batch tokens dim"]) -> Float[Tensor, "batch tokens dim"]:
        gate = F.silu(self.gate_proj(x))
        if torch.is_grad_enabled():
            return self.down_proj(gate * self.up_proj(x))
        return self.down_proj(gate.mul_(self.up_proj(x)))  # inference: reuse the gate's buffer


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with rotary embeddings and an optional KV cache."""

    def __init__(self, config: LlamaConfig, *, layer_index: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.layer_index = layer_index
        self.head_dim = config.head_dim
        self.attention_backend = attention_backend
        hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=config.attention_bias)

    @typecheck
    def forward(
        self,
        hidden_states: Float[Tensor, "batch tokens dim"],
        *,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: AttentionMask,
        cache: KVCache | None = None,
        cache_write: CacheWrite | None = None,
        weights_out: list[Tensor] | None = None,
    ) -> Float[Tensor, "batch tokens dim"]:
        """``cache_write``: where ``cache`` stores this call's keys/values. ``weights_out``: a list that receives this call's softmax weights ``[B, H, M, N]`` (float32), computed
        explicitly and then applied (for analysis; the fused kernel is used otherwise)."""
        cos, sin = position_embeddings
        # "b m (h d) -> b m h d" (native views: this runs once per layer per decoded token, where einops' parsing
        # would cost more than the tiny model's matmuls)
        queries = self.q_proj(hidden_states).unflatten(-1, (-1, self.head_dim))
        keys = self.k_proj(hidden_states).unflatten(-1, (-1, self.head_dim))
        values = self.v_proj(hidden_states).unflatten(-1, (-1, self.head_dim))
        queries = apply_rotary(queries, cos, sin)
        keys = apply_rotary(keys, cos, sin)
        if cache is not None:
            keys, values = cache.update(self.layer_index, keys, values, cache_write)
        if weights_out is not None:
            weights = attention_weights(queries, keys, causal=attention_mask.causal, mask=attention_mask.mask)
            weights_out.append(weights)
            per_head = keys.shape[2], queries.shape[2] // keys.shape[2]
            values_per_head = values.repeat_interleave(per_head[1], dim=2).float()
            attended = torch.einsum("bhmn,bnhd->bmhd", weights, values_per_head).to(queries.dtype)
            return self.o_proj(attended.flatten(2))
        attended = attention(
            queries,
            keys,
            values,
            causal=attention_mask.causal,
            mask=attention_mask.mask,
            backend=self.attention_backend,
            all_rows_attend=attention_mask.all_rows_attend,
        )
        return self.o_proj(attended.flatten(2))  # "b m h d -> b m (h d)"


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``h += attn(norm(h)); h += mlp(norm(h))``.

    With ``gradient_checkpointing`` on (training, no cache), the block body is recomputed in backward; forward hooks
    run outside the checkpointed region, so hooks that edit the hidden states are not re-run.
    """

    def __init__(self, config: LlamaConfig, *, layer_index: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.layer_index = layer_index
        self.self_attn = LlamaAttention(config, layer_index=layer_index, attention_backend=attention_backend)
        self.mlp = LlamaMLP(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, bias=config.mlp_bias
        )
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False

    def _block(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: AttentionMask,
        cache: KVCache | None,
        cache_write: CacheWrite | None = None,
        weights_out: list[Tensor] | None = None,
    ) -> Tensor:
        attended = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            cache_write=cache_write,
            weights_out=weights_out,
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))

    @typecheck
    def forward(
        self,
        hidden_states: Float[Tensor, "batch tokens dim"],
        *,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: AttentionMask,
        position_ids: Int[Tensor, "#batch tokens"] | None = None,
        cache: KVCache | None = None,
        cache_write: CacheWrite | None = None,
        weights_out: list[Tensor] | None = None,
    ) -> Float[Tensor, "batch tokens dim"]:
        """``position_ids`` is informational (rotation comes from ``position_embeddings``); hooks may read it.
        ``weights_out`` receives the attention weights (see ``LlamaAttention.forward``)."""
        if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
            return checkpoint(
                self._block, hidden_states, position_embeddings, attention_mask, None, use_reentrant=False
            )
        return self._block(hidden_states, position_embeddings, attention_mask, cache, cache_write, weights_out)
