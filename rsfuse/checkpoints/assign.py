"""The one way weights go into a model: ``assign_weights(model, shards, ...)``, used by every ``from_pretrained``
(``CLIPVisionTower``, ``LlamaForCausalLM``, ``MFRSVLM``) and by ``MFRSVLM.from_parts``.

A model built on the meta device receives the checkpoint's tensors themselves (``load_state_dict(assign=True)``:
no random initialisation, no second copy; floating tensors cast to ``dtype``, all moved to ``device``), shard by
shard, so peak memory is about one copy of the weights plus one shard. A model built for real (``from_parts``, whose
injectors start random) gets the tensors copied into its parameters. Either way every key is checked: unexpected
keys, wrong shapes and missing keys raise one ``CheckpointError`` naming the file and the keys. This module works on
any ``nn.Module`` and imports no model class.
"""

import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from rsfuse.checkpoints.io import CheckpointError

__all__ = ["assign_weights", "check_nothing_on_meta", "listing"]

LIST_LIMIT = 40


def listing(keys: list[str]) -> str:
    """``['a', 'b', ...]`` with at most ``LIST_LIMIT`` keys shown."""
    more = f" ... and {len(keys) - LIST_LIMIT} more" if len(keys) > LIST_LIMIT else ""
    return f"{keys[:LIST_LIMIT]}{more}"


def assign_weights(
    model: nn.Module,
    shards: Iterable[tuple[str | os.PathLike, dict[str, torch.Tensor]]],
    *,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    source: str | os.PathLike,
    required: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    hint: str = "",
    after_shard: Callable[[], None] | None = None,
    transient: Callable[[str], bool] | None = None,
) -> None:
    """Put ``(path, state dict)`` shards into ``model``; see the module docstring.

    ``required``: the keys that must be present (default: every key of the model except ``skip``); ``skip``: keys
    neither expected nor accepted (e.g. a tied ``lm_head.weight``); ``hint`` ends the mismatch message;
    ``after_shard`` runs after each shard is in (the loader's quantizer: one layer's full-precision weights live
    only until their shard is done). ``transient(key)``: whether ``after_shard`` replaces that weight; with it given,
    every other tensor is copied out of the shard's memory, so that nothing the model keeps holds on to a read file
    (a memory-mapped safetensors shard stays mapped, and its pages resident, while any tensor of it lives).
    """
    skip = set(skip)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items() if key not in skip}
    required = set(expected) if required is None else set(required)
    on_meta = any(parameter.is_meta for parameter in model.parameters())
    loaded: set[str] = set()
    unexpected: list[str] = []
    for path, shard in shards:
        accepted = {}
        for key, tensor in shard.items():
            if key in skip:
                continue
            if key not in expected:
                unexpected.append(f"{key} ({Path(path).name})" if str(path) != str(source) else key)
                continue
            if tuple(tensor.shape) != expected[key]:
                raise CheckpointError(
                    f"{path}: weight {key!r} has shape {tuple(tensor.shape)} in the checkpoint but the model expects "
                    f"{expected[key]}"
                )
            if on_meta:
                cast = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
                tensor = tensor.to(device=device, dtype=cast)
            if transient is not None and not transient(key):
                tensor = tensor.clone()
            accepted[key] = tensor
        model.load_state_dict(accepted, strict=False, assign=on_meta)
        loaded.update(accepted)
        shard = accepted = tensor = None  # no reference left to this shard while the next one is read
        if after_shard is not None:
            after_shard()
    missing = sorted(required - loaded)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
        raise CheckpointError(
            f"{source}: checkpoint does not match {type(model).__name__}: " + "; ".join(parts) + hint
        )


def check_nothing_on_meta(model: nn.Module, *, source: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` naming the parameters and buffers still on the meta device after loading."""
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise CheckpointError(f"{source}: these tensors were not loaded: {listing(left)}")
