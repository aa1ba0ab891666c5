"""Key/value caches for incremental decoding, in the ``[B, N, Hk, D]`` layout that ``rsfuse.ops.attention`` takes.

* ``DynamicKVCache``: grows by concatenation; nothing to size in advance.
* ``StaticKVCache``: one preallocated buffer per layer, written in place; ``update`` returns a view of the filled prefix.

Both keep their fill level as a Python int, so asking for ``seq_length`` never synchronises with the device.
"""

from abc import ABC, abstractmethod

import torch

from rsfuse._typing import Float, Tensor, typecheck

__all__ = ["KVCache", "DynamicKVCache", "StaticKVCache"]


class KVCache(ABC):
    """Per-layer store of rotated keys and values of the positions already processed."""

    @property
    @abstractmethod
    def seq_length(self) -> int:
        """Number of positions held (those of layer 0)."""

    @abstractmethod
    def update(
        self, layer_index: int, keys: Float[Tensor, "batch new kv_heads head_dim"], values: Float[Tensor, "batch new kv_heads head_dim"]
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        """Append this call's keys/values for ``layer_index``; return all keys/values of that layer."""


class DynamicKVCache(KVCache):
    """A cache that grows by concatenation (one tensor pair per layer)."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def seq_length(self) -> int:
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
    """Preallocated ``[batch, max_length, kv_heads, head_dim]`` buffers per layer, filled in place."""

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
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_layers

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

    @property
    def seq_length(self) -> int:
        return self.lengths[0]

    @typecheck
    def update(
        self, layer_index: int, keys: Float[Tensor, "batch new kv_heads head_dim"], values: Float[Tensor, "batch new kv_heads head_dim"]
    ) -> tuple[Float[Tensor, "batch total kv_heads head_dim"], Float[Tensor, "batch total kv_heads head_dim"]]:
        buffer_keys, buffer_values = self.keys[layer_index], self.values[layer_index]
        if keys.shape[0] != buffer_keys.shape[0] or keys.shape[2:] != buffer_keys.shape[2:]:
            raise ValueError(
                f"StaticKVCache: keys {tuple(keys.shape)} do not fit buffers of shape {tuple(buffer_keys.shape)}"
            )
        start = self.lengths[layer_index]
        end = start + keys.shape[1]
        if end > self.max_length:
            raise ValueError(f"StaticKVCache: {end} positions exceed max_length {self.max_length}")
        buffer_keys[:, start:end] = keys
        buffer_values[:, start:end] = values
        self.lengths[layer_index] = end
        return buffer_keys[:, :end], buffer_values[:, :end]
