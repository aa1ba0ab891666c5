"""Injecting detail into the visual span of a decoder's hidden states: the one routine that both rsfuse's decoder
(explicitly, at prefill) and ``graft`` (for decoders we do not own) use.

``VisualContext`` is what a prefill needs to know: the projected stacks ``[B, K, N, D]`` (``[B, N, D]`` for an
injector without a router), where the ``N`` visual tokens sit (a fixed ``slice`` or per-sample ``positions [B, N]``)
and which samples carry an image (``sample_mask [B]``; the others stay untouched). ``DecoderInjection`` binds a
context to ``{layer index: injector}`` and is what a decoder calls before each of those layers; decoding steps pass
none, so they see the injected visual keys/values through the KV cache.
"""

from dataclasses import dataclass, field
from typing import Mapping

import torch
from einops import repeat
from torch import nn

from rsfuse._typing import Bool, Float, Int, Tensor

__all__ = ["VisualContext", "DecoderInjection", "InjectionStats", "inject_visual"]


@dataclass
class VisualContext:
    """The visual side of one prefill: stacks, visual positions (or a slice), and the samples that have an image."""

    stacks: Float[Tensor, "batch *stack tokens dim"]
    positions: Int[Tensor, "batch tokens"] | None = None
    visual_slice: slice | None = None
    sample_mask: Bool[Tensor, " batch"] | None = None

    def __post_init__(self) -> None:
        tokens = self.stacks.shape[-2]
        if (self.positions is None) == (self.visual_slice is None):
            raise ValueError("VisualContext: give exactly one of positions [B, N] and visual_slice")
        if self.positions is not None and self.positions.shape[-1] != tokens:
            raise ValueError(
                f"VisualContext: positions {tuple(self.positions.shape)} and stacks {tuple(self.stacks.shape)} "
                "disagree on the number of visual tokens"
            )
        if self.visual_slice is not None and self.visual_slice.stop - self.visual_slice.start != tokens:
            raise ValueError(
                f"VisualContext: visual_slice {self.visual_slice} covers {self.visual_slice.stop - self.visual_slice.start}"
                f" positions but the stacks hold {tokens} tokens (stacks shape {tuple(self.stacks.shape)})"
            )


@dataclass
class InjectionStats:
    """What one injector did at prefill: gate mean over channels ``[B, N]`` and router weights (or None)."""

    gate_mean: Tensor
    router_weights: Tensor | None


def inject_visual(
    injector: nn.Module, hidden: Float[Tensor, "batch sequence dim"], context: VisualContext
) -> tuple[Tensor, InjectionStats | None]:
    """``hidden`` with ``injector`` applied to its visual span (the sequence must hold the whole span: a prefill),
    and the injector's stats (None for an injector without ``forward_with_stats``)."""
    if context.positions is None:
        start, stop = context.visual_slice.start, context.visual_slice.stop
        visual = hidden[:, start:stop]
    else:
        gather_index = repeat(context.positions, "batch tokens -> batch tokens dim", dim=hidden.shape[-1])
        visual = torch.gather(hidden, 1, gather_index)
    stacks = context.stacks.to(visual.dtype)
    stats = None
    if hasattr(injector, "forward_with_stats"):
        injected, gate_mean, weights = injector.forward_with_stats(visual, stacks)
        stats = InjectionStats(gate_mean, weights)
    else:
        injected = injector(visual, stacks)
    if context.sample_mask is not None:
        injected = torch.where(context.sample_mask[:, None, None], injected, visual)
    if context.positions is None:
        return torch.cat([hidden[:, :start], injected, hidden[:, stop:]], dim=1), stats
    return hidden.scatter(1, gather_index, injected), stats


@dataclass
class DecoderInjection:
    """``injectors`` ({0-based layer index: injector}) bound to one prefill's ``context``; a decoder calls
    ``injection(layer_index, hidden)`` before each layer in ``layer_indices``. ``stats`` collects what each injector
    did (detached) when ``keep_stats`` is set."""

    injectors: Mapping[str, nn.Module]
    context: VisualContext
    keep_stats: bool = False
    stats: dict[int, InjectionStats] = field(default_factory=dict)

    @property
    def layer_indices(self) -> frozenset[int]:
        return frozenset(int(key) for key in self.injectors.keys())

    def __call__(self, layer_index: int, hidden: Tensor) -> Tensor:
        hidden, stats = inject_visual(self.injectors[str(layer_index)], hidden, self.context)
        if self.keep_stats and stats is not None:
            weights = None if stats.router_weights is None else stats.router_weights.detach()
            self.stats[layer_index] = InjectionStats(stats.gate_mean.detach(), weights)
        return hidden
