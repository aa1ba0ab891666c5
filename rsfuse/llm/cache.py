"""Key/value caches for incremental decoding, in the ``[B, N, Hk, D]`` layout that ``rsfuse.ops.attention`` takes.

A cache is storage only: it holds no fill levels, masks or modes. Each decoder forward describes where its new
positions go with a `CacheWrite` (the slots per row, which cache rows, how many columns to attend over), and every
layer calls ``cache.update(layer_index, keys, values, write)``, which stores the new keys/values and returns the
keys/values that layer attends to. Whoever drives the cache (``rsfuse.generation.GenerationSession``, or a caller of
``LlamaForCausalLM``) owns the fill levels and the key mask and passes them in as ``cache_position`` and
``attention_mask`` (HF convention: the mask covers every attended column).

* ``DynamicKVCache``: grows by concatenation (appends whatever the slots say); nothing to size in advance.
* ``StaticKVCache`` (the pytorch-labs/gpt-fast ``KVCache.update(input_pos, k, v)`` pattern): preallocated
  ``[B, max_length, Hk, D]`` buffers per layer, written in place at *tensor* slots per row, so a decoding step has
  fixed shapes, never synchronises with the host and can be compiled (and captured in a CUDA graph). A prefill of
  some rows writes straight into those rows (``CacheWrite.rows``) while the others keep their contents.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from einops import rearrange

from rsfuse._typing import Float, Int, Tensor, typecheck

__all__ = ["CacheWrite", "KVCache", "DynamicKVCache", "StaticKVCache"]


@dataclass(frozen=True)
class CacheWrite:
    """Where one forward's ``M`` new positions go: ``slots [b, M]`` (cache column of each new token, per row; a
    ``[1, M]`` row broadcasts), ``rows [b]`` (the cache rows of the batch's rows; None = rows ``0..b-1``, all of
    them), ``width`` (the cache columns the layers attend over: ``0:width``)."""

    slots: Int[Tensor, "#batch new"]
    rows: Int[Tensor, " batch"] | None
    width: int


class KVCache(ABC):
    """Per-layer store of rotated keys and values of the positions already processed."""

    @abstractmethod
    def update(
        self,
        layer_index: int,
        keys: Float[Tensor, "batch new kv_heads head_dim"],
        values: Float[Tensor, "batch new kv_heads head_dim"],
        write: CacheWrite,
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        """Store this call's keys/values for ``layer_index`` at ``write``; return the ``write.width`` columns of
        keys/values that call attends to."""

    @abstractmethod
    def next_write(self, new_tokens: int) -> CacheWrite:
        """The write of a call that gives no ``cache_position``: appending after what is held (a cache that cannot
        tell raises)."""


class DynamicKVCache(KVCache):
    """A cache that grows by concatenation (one tensor pair per layer); every write appends."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def seq_length(self) -> int:
        """Number of positions held (those of layer 0)."""
        return self.keys[0].shape[1] if self.keys else 0

    def next_write(self, new_tokens: int) -> CacheWrite:
        past = self.seq_length
        device = self.keys[0].device if self.keys else None
        slots = rearrange(torch.arange(past, past + new_tokens, device=device), "m -> 1 m")
        return CacheWrite(slots=slots, rows=None, width=past + new_tokens)

    @typecheck
    def update(
        self,
        layer_index: int,
        keys: Float[Tensor, "batch new kv_heads head_dim"],
        values: Float[Tensor, "batch new kv_heads head_dim"],
        write: CacheWrite,
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        if write.rows is not None:
            raise ValueError("DynamicKVCache: writes to chosen rows need a StaticKVCache")
        if layer_index == len(self.keys):
            self.keys.append(keys)
            self.values.append(values)
        elif layer_index < len(self.keys):
            self.keys[layer_index] = torch.cat((self.keys[layer_index], keys), dim=1)
            self.values[layer_index] = torch.cat((self.values[layer_index], values), dim=1)
        else:
            raise IndexError(f"DynamicKVCache: layer {layer_index} updated before layer {len(self.keys)}")
        if self.keys[layer_index].shape[1] != write.width:
            raise ValueError(
                f"DynamicKVCache: {self.keys[layer_index].shape[1]} positions held but the mask covers {write.width}"
            )
        return self.keys[layer_index], self.values[layer_index]


class StaticKVCache(KVCache):
    """Preallocated ``[batch, max_length, kv_heads, head_dim]`` buffers per layer, written at tensor slots."""

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, max_length, num_kv_heads, head_dim)
        self.max_length = max_length
        self.batch_size = batch_size
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._row_starts = rearrange(torch.arange(batch_size, device=device) * max_length, "b -> b 1")

    @classmethod
    def for_model(cls, config, *, batch_size: int, max_length: int, dtype: torch.dtype, device) -> "StaticKVCache":
        """A cache sized for a ``LlamaConfig``."""
        return cls(
            num_layers=config.num_hidden_layers,
            batch_size=batch_size,
            max_length=max_length,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            dtype=dtype,
            device=device,
        )

    def mark_static_addresses(self) -> None:
        """Tell ``torch.compile`` that the buffers never move (lets CUDA graphs capture steps that write them)."""
        for tensor in (*self.keys, *self.values, self._row_starts):
            torch._dynamo.mark_static_address(tensor)

    def next_write(self, new_tokens: int) -> CacheWrite:
        raise ValueError(
            "StaticKVCache: pass cache_position (the slots of the new tokens) and an attention_mask over the "
            "cache's columns; the cache keeps no fill level (GenerationSession does)"
        )

    def _flat_slots(self, write: CacheWrite, batch: int) -> Tensor:
        """Indices into the ``[B * max_length]`` flattened rows of the slots ``write`` names."""
        starts = self._row_starts[:batch] if write.rows is None else rearrange(write.rows * self.max_length, "b -> b 1")
        return (starts + write.slots.clamp_max(self.max_length - 1)).view(-1)  # [b, M] (native views: hot path)

    @typecheck
    def update(
        self,
        layer_index: int,
        keys: Float[Tensor, "batch new kv_heads head_dim"],
        values: Float[Tensor, "batch new kv_heads head_dim"],
        write: CacheWrite,
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        buffer_keys, buffer_values = self.keys[layer_index], self.values[layer_index]
        batch = keys.shape[0]
        if keys.shape[2:] != buffer_keys.shape[2:] or (write.rows is None and batch > self.batch_size):
            raise ValueError(
                f"StaticKVCache: keys {tuple(keys.shape)} do not fit buffers of shape {tuple(buffer_keys.shape)}"
            )
        if write.width > self.max_length:
            raise ValueError(f"StaticKVCache: {write.width} positions exceed max_length {self.max_length}")
        flat = self._flat_slots(write, batch)
        buffer_keys.view(-1, *buffer_keys.shape[2:]).index_copy_(0, flat, keys.reshape(-1, *keys.shape[2:]))
        buffer_values.view(-1, *buffer_values.shape[2:]).index_copy_(0, flat, values.reshape(-1, *values.shape[2:]))
        if write.rows is None:
            return buffer_keys[:batch, : write.width], buffer_values[:batch, : write.width]
        return (buffer_keys[:, : write.width].index_select(0, write.rows),
                buffer_values[:, : write.width].index_select(0, write.rows))
