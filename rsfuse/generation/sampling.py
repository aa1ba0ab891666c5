"""Per-row decoding settings (``SamplingParams``) and the sampler that applies them on the device (``sample_tokens``):
greedy where the temperature is 0, otherwise a draw from the temperature-scaled softmax restricted to the top-p
nucleus, by the exponential race ``argmax(p / q)``, ``q ~ Exp(1)`` — no host synchronisation, one call for a batch of
rows with different settings.

The noise is counter-based (the idea of Philox / JAX's keys): ``q`` of token ``v`` at a row's step ``t`` is a hash
of ``(seed, t, v)``, computed on the device from the row's seed and step counters. So a request's answer depends on
its own seed only — not on the rows batched beside it, their order or their number — and a decoding step stays one
graph with no generator state and no host sync. The hash is Chris Wellons' ``lowbias32`` (32-bit multiply-xorshift,
emulated in int64 with explicit masks so it runs the same on every device).
"""

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from rsfuse._typing import Float, Int, Tensor

__all__ = ["SamplingParams", "sample_tokens", "noise_uniform", "draw_seed"]

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded and when it stops. ``temperature == 0`` is greedy; ``eos_token_ids`` None = the
    model's; ``stop_strings`` need the session's ``decode``; ``seed`` (None: drawn from the session's generator)
    fixes a sampled answer whatever else is batched."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"generate: temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"generate: top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"generate: seed must be an int in [0, 2**63), got {self.seed!r}")


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A row seed from ``generator`` (None: torch's global generator, so ``torch.manual_seed`` fixes it)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (), generator=generator, device=device))


def _mix32(x: Tensor) -> Tensor:
    """``lowbias32`` on int64 holding 32-bit values (a bijection of [0, 2³²))."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def noise_uniform(
    seeds: Int[Tensor, " batch"], steps: Int[Tensor, " batch"], token_ids: Int[Tensor, "batch vocab"]
) -> Float[Tensor, "batch vocab"]:
    """Uniform noise in (0, 1), float32, a function of ``(seed, step, token id)`` only (23-bit resolution)."""
    key = _mix32((seeds >> 32) & _MASK32)
    key = _mix32(key ^ (seeds & _MASK32))
    key = _mix32(key ^ (steps & _MASK32))
    key = rearrange(key, "b -> b 1")
    bits = _mix32(_mix32(key ^ _mix32(token_ids & _MASK32)) ^ key)
    return ((bits >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def sample_tokens(
    logits: Float[Tensor, "batch vocab"],
    temperature: Float[Tensor, " batch"],
    top_p: Float[Tensor, " batch"],
    *,
    seeds: Int[Tensor, " batch"],
    steps: Int[Tensor, " batch"],
) -> Int[Tensor, " batch"]:
    """One token per row: the argmax where ``temperature == 0``, else a draw from ``softmax(logits / T)`` restricted
    to the smallest set of top tokens whose probability reaches ``top_p``, with the noise of ``(seeds, steps)``
    (no host synchronisation)."""
    greedy = logits.argmax(dim=-1)
    scaled = logits.float() / rearrange(temperature.clamp_min(1e-6), "b -> b 1")
    probs, ids = torch.softmax(scaled, dim=-1).sort(dim=-1, descending=True)
    before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(before >= rearrange(top_p, "b -> b 1"), 0.0)
    exponential = -torch.log(noise_uniform(seeds, steps, ids))
    choice = (probs / exponential).argmax(dim=-1, keepdim=True)
    sampled = rearrange(ids.gather(-1, choice), "b 1 -> b")
    return torch.where(temperature == 0, greedy, sampled)
