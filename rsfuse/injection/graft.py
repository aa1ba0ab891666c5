"""``graft``: run gated detail injectors inside any decoder, without touching its weights or key names.

Each injector is attached to a decoder layer with a forward pre-hook (``register_forward_pre_hook(with_kwargs=True)``),
so it rewrites the layer's input hidden states ``hidden[:, visual]`` just before the layer runs. The host keeps its
modules, parameters and ``state_dict`` keys; the injectors live only in ``handle.injectors`` (an ``nn.ModuleDict`` an
optimizer can read), and ``handle.remove()`` detaches the hooks, restoring the host exactly.

Injection is active only inside ``with handle.use(stacks):`` and only on calls whose sequence is at least as long as
the visual span (the prefill); single-token decoding steps pass through unchanged and, with a KV cache, attend to the
injected visual keys and values computed at prefill.

Works with rsfuse's ``LlamaForCausalLM`` and Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
``MistralForCausalLM`` (decoder layers at ``model.model.layers``, hidden states the first positional argument or the
``hidden_states`` keyword). This module imports neither ``rsfuse.llm`` nor ``transformers``.
"""

import contextlib
from typing import Any, Iterator, Mapping

from torch import nn

from rsfuse._typing import Bool, Float, Int, Tensor
from rsfuse.injection.visual import VisualContext, inject_visual

__all__ = ["GraftHandle", "graft", "find_decoder_layers"]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM: ``model.model.layers`` (HF and rsfuse), or ``model.layers`` (a bare decoder)."""
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(
        f"graft: cannot find decoder layers on {type(model).__name__} (looked for model.model.layers and model.layers)"
    )


class GraftHandle:
    """The result of :func:`graft`: ``use(stacks)`` activates the injectors, ``remove()`` detaches them."""

    def __init__(self, *, injectors: nn.ModuleDict, visual_slice: slice) -> None:
        self.injectors = injectors
        self.visual_slice = visual_slice
        self._hooks: list[Any] = []
        self._active: VisualContext | None = None
        self.removed = False

    @property
    def layer_indices(self) -> list[int]:
        """0-based indices of the decoder layers that carry an injector, ascending."""
        return sorted(int(key) for key in self.injectors.keys())

    @contextlib.contextmanager
    def use(
        self,
        stacks: Float[Tensor, "batch *stack tokens dim"],
        *,
        visual_positions: Int[Tensor, "batch tokens"] | None = None,
        sample_mask: Bool[Tensor, " batch"] | None = None,
    ) -> Iterator["GraftHandle"]:
        """Inject ``stacks`` (``[B, K, N, D]`` with routers, ``[B, N, D]`` without) on calls made inside the block.

        ``visual_positions`` (``[B, N]`` sequence indices, per sample) replaces ``visual_slice`` for token placement;
        ``sample_mask`` (``[B]``) limits injection to the samples where it is True (text-only samples stay untouched).
        """
        if self.removed:
            raise RuntimeError("graft handle was removed; graft the injectors again to use them")
        if self._active is not None:
            raise RuntimeError("graft handle is already in use (nested handle.use blocks are not supported)")
        self._active = VisualContext(
            stacks=stacks,
            positions=visual_positions,
            visual_slice=self.visual_slice if visual_positions is None else None,
            sample_mask=sample_mask,
        )
        try:
            yield self
        finally:
            self._active = None

    def remove(self) -> None:
        """Detach every hook; the host is left exactly as before ``graft``."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.removed = True

    # ----- the hook ------------------------------------------------------------------------------------------------
    def _inject(self, layer_index: int, hidden: Tensor) -> Tensor | None:
        """The rewritten hidden states for one layer call, or None to leave the call untouched."""
        active = self._active
        if active is None:
            return None
        span = active.stacks.shape[-2] if active.positions is not None else self.visual_slice.stop
        if hidden.shape[1] < span:
            return None  # a decoding step: the visual span lives in the KV cache
        return inject_visual(self.injectors[str(layer_index)], hidden, active)[0]


class _LayerHook:
    """The forward pre-hook of one decoder layer (an object, not a closure, so ``copy.deepcopy`` of a model that holds
    a handle keeps hook, handle and injectors consistent)."""

    def __init__(self, handle: GraftHandle, layer_index: int) -> None:
        self.handle = handle
        self.layer_index = layer_index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new_hidden = self.handle._inject(self.layer_index, args[0])
            return None if new_hidden is None else ((new_hidden, *args[1:]), kwargs)
        if "hidden_states" in kwargs:
            new_hidden = self.handle._inject(self.layer_index, kwargs["hidden_states"])
            return None if new_hidden is None else (args, {**kwargs, "hidden_states": new_hidden})
        raise TypeError(
            f"graft: decoder layer {self.layer_index} ({type(module).__name__}) was called without hidden states "
            "(neither a positional argument nor the 'hidden_states' keyword)"
        )


def _normalise_slice(visual_slice: slice | tuple[int, int]) -> slice:
    if isinstance(visual_slice, tuple):
        visual_slice = slice(*visual_slice)
    if not isinstance(visual_slice, slice):
        raise TypeError(f"graft: visual_slice must be a slice or a (start, stop) pair, got {type(visual_slice).__name__}")
    start = 0 if visual_slice.start is None else visual_slice.start
    stop = visual_slice.stop
    if visual_slice.step not in (None, 1):
        raise ValueError(f"graft: visual_slice must be contiguous (step 1), got {visual_slice}")
    if not isinstance(stop, int) or not isinstance(start, int) or start < 0 or stop <= start:
        raise ValueError(f"graft: visual_slice needs explicit 0 <= start < stop, got {visual_slice}")
    return slice(start, stop)


def graft(
    model: nn.Module,
    injectors: Mapping[int | str, nn.Module],
    *,
    visual_slice: slice | tuple[int, int],
) -> GraftHandle:
    """Attach ``injectors`` ({0-based decoder layer index: GatedInjector}) to ``model``'s decoder layers.

    Each injector runs just before its layer on ``hidden[:, visual_slice]`` (``[B, N, D]``) inside
    ``with handle.use(stacks):``. The injectors are not registered as submodules of ``model``.
    """
    layers = find_decoder_layers(model)
    visual_slice = _normalise_slice(visual_slice)
    modules: dict[str, nn.Module] = {}
    for key, injector in injectors.items():
        index = int(key)
        if not 0 <= index < len(layers):
            raise ValueError(
                f"graft: injection layer index {index} (0-based) is out of range for a decoder with {len(layers)} layers"
            )
        if not isinstance(injector, nn.Module):
            raise TypeError(f"graft: injector for layer {index} is {type(injector).__name__}, not an nn.Module")
        modules[str(index)] = injector
    if not modules:
        raise ValueError("graft: no injectors given")
    ordered = nn.ModuleDict({key: modules[key] for key in sorted(modules, key=int)})
    handle = GraftHandle(injectors=ordered, visual_slice=visual_slice)
    for key in ordered.keys():
        index = int(key)
        handle._hooks.append(layers[index].register_forward_pre_hook(_LayerHook(handle, index), with_kwargs=True))
    return handle
