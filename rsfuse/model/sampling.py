"""Per-row decoding settings (``SamplingParams``) and the sampler that applies them on the device (``sample_tokens``):
greedy where the temperature is 0, otherwise a draw from the temperature-scaled softmax restricted to the top-p
nucleus, by the exponential race ``argmax(p / q)``, ``q ~ Exp(1)`` — no host synchronisation, one call for a batch of
rows with different settings."""

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from rsfuse._typing import Float, Int, Tensor

__all__ = ["SamplingParams", "sample_tokens"]


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded and when it stops. ``temperature == 0`` is greedy; ``eos_token_ids`` None = the
    model's; ``stop_strings`` need the session's ``decode``."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"generate: temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"generate: top_p must be in (0, 1], got {self.top_p!r}")


def sample_tokens(
    logits: Float[Tensor, "batch vocab"],
    temperature: Float[Tensor, " batch"],
    top_p: Float[Tensor, " batch"],
    *,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row: the argmax where ``temperature == 0``, else a draw from ``softmax(logits / T)`` restricted
    to the smallest set of top tokens whose probability reaches ``top_p`` (no host synchronisation)."""
    greedy = logits.argmax(dim=-1)
    scaled = logits.float() / rearrange(temperature.clamp_min(1e-6), "b -> b 1")
    probs, ids = torch.softmax(scaled, dim=-1).sort(dim=-1, descending=True)
    before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(before >= rearrange(top_p, "b -> b 1"), 0.0)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    choice = (probs / noise).argmax(dim=-1, keepdim=True)
    sampled = rearrange(ids.gather(-1, choice), "b 1 -> b")
    return torch.where(temperature == 0, greedy, sampled)
