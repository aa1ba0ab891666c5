"""Key/value caches for incremental decoding, in the ``[B, N, Hk, D]`` layout that ``rsfuse.ops.attention`` takes.

* ``DynamicKVCache``: grows by concatenation; nothing to size in advance; its length is a Python int.
* ``StaticKVCache`` (the pytorch-labs/gpt-fast pattern): preallocated ``[B, max_length, Hk, D]`` buffers per layer,
  written in place at a *tensor* position per row, so a decoding step has fixed shapes, never synchronises with the
  host and can be compiled (and captured in a CUDA graph). Each row keeps its own fill level (``lengths [B]``) and a
  key mask (``key_mask [B, max_length]``: which slots hold a real token), so rows may hold prompts of different
  lengths and a finished row can be refilled with a new prompt (``write_row``) while the others keep decoding.

A decoder forward calls ``begin(new_tokens, attention_mask)`` once (it returns the mask every layer uses), then each
layer calls ``update(layer, keys, values)``, then ``end()``.
"""

from abc import ABC, abstractmethod

import torch
from einops import rearrange

from rsfuse._typing import Bool, Float, Tensor, typecheck

__all__ = ["KVCache", "DynamicKVCache", "StaticKVCache"]


class KVCache(ABC):
    """Per-layer store of rotated keys and values of the positions already processed."""

    @abstractmethod
    def update(
        self, layer_index: int, keys: Float[Tensor, "batch new kv_heads head_dim"], values: Float[Tensor, "batch new kv_heads head_dim"]
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        """Store this call's keys/values for ``layer_index``; return the keys/values that call attends to."""


class DynamicKVCache(KVCache):
    """A cache that grows by concatenation (one tensor pair per layer)."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def seq_length(self) -> int:
        """Number of positions held (those of layer 0)."""
        return self.keys[0].shape[1] if self.keys else 0

    @typecheck
    def update(
        self, layer_index: int, keys: Float[Tensor, "batch new kv_heads head_dim"], values: Float[Tensor, "batch new kv_heads head_dim"]
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        if layer_index == len(self.keys):
            self.keys.append(keys)
            self.values.append(values)
        elif layer_index < len(self.keys):
            self.keys[layer_index] = torch.cat((self.keys[layer_index], keys), dim=1)
            self.values[layer_index] = torch.cat((self.values[layer_index], values), dim=1)
        else:
            raise IndexError(f"DynamicKVCache: layer {layer_index} updated before layer {len(self.keys)}")
        return self.keys[layer_index], self.values[layer_index]


class StaticKVCache(KVCache):
    """Preallocated ``[batch, max_length, kv_heads, head_dim]`` buffers per layer, written at ``lengths [B]``.

    The first call on an empty cache (a prefill, ``is_empty``) writes slots ``0:M`` and attends over its own ``M``
    positions only; every later call writes ``M`` slots at each row's fill level and attends over the whole buffer
    through ``key_mask`` and a per-row causal bound.
    """

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
        self.key_mask = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.active = torch.ones(batch_size, dtype=torch.bool, device=device)
        self._row_offsets = rearrange(torch.arange(batch_size, device=device) * max_length, "b -> b 1")
        self.is_empty = True
        self.track_fill = True  # a driver that checks capacity itself (GenerationSession) turns this off
        self._filled = 0  # slots written by batch-wide calls (a Python int: overflow is caught without a sync)
        self._prefill = False
        self._write: Tensor | None = None

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
        for tensor in (*self.keys, *self.values, self.key_mask, self.lengths, self.active, self._row_offsets):
            torch._dynamo.mark_static_address(tensor)

    # ----- one forward -----------------------------------------------------------------------------------------
    def begin(
        self, new_tokens: int, attention_mask: Tensor | None
    ) -> Bool[Tensor, "batch 1 new keys"] | None:
        """Record where this call's ``new_tokens`` go; returns the attention mask over the buffer (None on a prefill:
        the caller builds the usual mask over the new positions). ``attention_mask`` is HF style (its last
        ``new_tokens`` columns mark which new tokens are real)."""
        if self.track_fill and self._filled + new_tokens > self.max_length:
            raise ValueError(
                f"StaticKVCache: {self._filled} + {new_tokens} positions exceed max_length {self.max_length}"
            )
        new_mask = None if attention_mask is None else attention_mask[:, -new_tokens:].to(torch.bool)
        if self.is_empty:
            self._prefill = True
            if new_mask is not None:
                self.key_mask[:, :new_tokens] = new_mask
            else:
                self.key_mask[:, :new_tokens] = True
            return None
        self._prefill = False
        if new_tokens == 1:  # a decoding step: slots past a row's fill level are never marked, so no causal bound
            write = self.lengths.clamp_max(self.max_length - 1).unsqueeze(1)  # [B, 1] (hot path: native views)
            self._write = write
            flat = (self._row_offsets + write).view(-1)
            self.key_mask.view(-1)[flat] = True if new_mask is None else new_mask.reshape(-1)
            return self.key_mask[:, None, None, :]
        offsets = torch.arange(new_tokens, device=self.lengths.device)
        write = (rearrange(self.lengths, "b -> b 1") + offsets).clamp_max(self.max_length - 1)  # [B, M]
        rows = rearrange(torch.arange(self.batch_size, device=self.lengths.device), "b -> b 1")
        self.key_mask[rows, write] = True if new_mask is None else new_mask
        self._write = write
        slots = rearrange(torch.arange(self.max_length, device=self.lengths.device), "n -> 1 1 n")
        causal = slots <= rearrange(write, "b m -> b m 1")
        return rearrange(causal & rearrange(self.key_mask, "b n -> b 1 n"), "b m n -> b 1 m n")

    @typecheck
    def update(
        self, layer_index: int, keys: Float[Tensor, "batch new kv_heads head_dim"], values: Float[Tensor, "batch new kv_heads head_dim"]
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        buffer_keys, buffer_values = self.keys[layer_index], self.values[layer_index]
        if keys.shape[0] != buffer_keys.shape[0] or keys.shape[2:] != buffer_keys.shape[2:]:
            raise ValueError(
                f"StaticKVCache: keys {tuple(keys.shape)} do not fit buffers of shape {tuple(buffer_keys.shape)}"
            )
        if self._prefill:
            new = keys.shape[1]
            buffer_keys[:, :new] = keys
            buffer_values[:, :new] = values
            return keys, values
        flat = (self._row_offsets + self._write).view(-1)
        buffer_keys.view(-1, *buffer_keys.shape[2:]).index_copy_(0, flat, keys.reshape(-1, *keys.shape[2:]))
        buffer_values.view(-1, *buffer_values.shape[2:]).index_copy_(0, flat, values.reshape(-1, *values.shape[2:]))
        return buffer_keys, buffer_values

    def end(self, new_tokens: int) -> None:
        """Advance the fill level of every active row by ``new_tokens``."""
        self.lengths += new_tokens * self.active.long()
        if self.track_fill:
            self._filled += new_tokens
        self.is_empty = False
        self._prefill = False

    # ----- rows --------------------------------------------------------------------------------------------------
    def write_row(self, row: int, source: "StaticKVCache", source_row: int = 0) -> None:
        """Copy one row of another (prefilled) cache into ``row`` of this one: a new prompt joins a running batch."""
        length = source._filled
        if length > self.max_length:
            raise ValueError(f"StaticKVCache.write_row: {length} positions exceed max_length {self.max_length}")
        for mine, theirs in ((self.keys, source.keys), (self.values, source.values)):
            for layer, buffer in enumerate(mine):
                buffer[row, :length] = theirs[layer][source_row, :length]
        self.key_mask[row] = False
        self.key_mask[row, :length] = source.key_mask[source_row, :length]
        self.lengths[row] = length
        self.active[row] = True
        self.is_empty = False
        self._filled = max(self._filled, length)

    def reset_row(self, row: int) -> None:
        """Forget row ``row`` (a finished or cancelled request)."""
        self.key_mask[row] = False
        self.lengths[row] = 0
        self.active[row] = False

    def reset(self) -> None:
        """Empty every row (the buffers are kept, so a compiled step captured on them stays valid)."""
        self.key_mask.zero_()
        self.lengths.zero_()
        self.active.fill_(True)
        self.is_empty, self.track_fill, self._filled, self._prefill, self._write = True, True, 0, False, None

    def sync_fill_level(self) -> int:
        """Re-read the longest row's fill level from the device (one host sync); the overflow check uses it."""
        self._filled = int(self.lengths.max()) if self.batch_size else 0
        return self._filled
