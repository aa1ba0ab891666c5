"""Rotary position embeddings exactly as HF Llama computes them ("default", "linear", "dynamic", "llama3").

Frequencies are kept in float32 whatever the model's dtype; cos/sin are cast to the activations' dtype, like HF.
"Dynamic" NTK scaling is computed from the largest position of the current call without host synchronisation:
``base' = base · (factor · L / max_pos − (factor − 1)) ^ (d / (d − 2))`` with ``L = max(max position + 1, max_pos)``.
(HF's stateful version matches this whenever positions grow monotonically, e.g. prefill then cached decoding.)
"""

import math

import torch
from einops import rearrange
from torch import nn

from rsfuse._typing import Float, Int, Tensor, typecheck
from rsfuse.llm.config import LlamaConfig

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_inverse_frequencies"]


def _exponents(head_dim: int, device: torch.device | None) -> Tensor:
    return torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim


def rope_inverse_frequencies(config: LlamaConfig, device: torch.device | None = None) -> Float[Tensor, "half_dim"]:
    """Float32 inverse frequencies ``[head_dim / 2]`` for the config's RoPE type ("dynamic": its unscaled base)."""
    head_dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** _exponents(head_dim, device))
    scaling = config.rope_scaling or {}
    if config.rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif config.rope_type == "llama3":
        factor = scaling["factor"]
        low_freq_factor = scaling["low_freq_factor"]
        high_freq_factor = scaling["high_freq_factor"]
        old_context = scaling["original_max_position_embeddings"]
        low_freq_wavelength = old_context / low_freq_factor
        high_freq_wavelength = old_context / high_freq_factor
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelength < high_freq_wavelength) * ~(wavelength > low_freq_wavelength)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """``forward(position_ids [B, M], dtype) -> (cos, sin)``, each ``[B, M, head_dim]``."""

    inv_freq: Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        """Recompute the float32 frequencies on ``device`` (used after loading a model built on the meta device)."""
        device = self.inv_freq.device if device is None else torch.device(device)
        self.inv_freq = rope_inverse_frequencies(self.config, device)

    def _apply(self, fn, recurse=True):
        """Follow device moves but keep the frequencies in float32 (``model.half()`` must not round them)."""
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            self.inv_freq = rope_inverse_frequencies(self.config, self.inv_freq.device)
        return self

    def _dynamic_inverse_frequencies(self, position_ids: Tensor) -> Tensor:
        scaling = self.config.rope_scaling or {}
        factor = scaling["factor"]
        max_positions = self.config.max_position_embeddings
        head_dim = self.config.head_dim
        seq_len = torch.clamp(position_ids.max() + 1, min=max_positions)
        base = self.config.rope_theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / (base ** _exponents(head_dim, position_ids.device))

    @typecheck
    def forward(
        self, position_ids: Int[Tensor, "#batch tokens"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "#batch tokens head_dim"], Float[Tensor, "#batch tokens head_dim"]]:
        inv_freq = self._dynamic_inverse_frequencies(position_ids) if self.config.rope_type == "dynamic" else self.inv_freq
        positions = rearrange(position_ids, "b m -> b m 1").float()
        freqs = positions * inv_freq.to(device=position_ids.device, dtype=torch.float32)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@typecheck
def apply_rotary(
    x: Float[Tensor, "batch tokens heads head_dim"],
    cos: Float[Tensor, "#batch tokens head_dim"],
    sin: Float[Tensor, "#batch tokens head_dim"],
) -> Float[Tensor, "batch tokens heads head_dim"]:
    """Rotate ``x`` (``[B, M, H, D]``) by the angles whose cos/sin are given (HF's ``rotate_half`` convention)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # "b m d -> b m 1 d" (hot path: native view)
    return torch.addcmul(x * cos, _rotate_half(x), sin)
