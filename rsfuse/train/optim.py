"""Optimiser pieces of the training recipe: AdamW with a separate vision-tower learning rate, a cosine schedule with
linear warmup, and the clipped optimizer step that closes a gradient-accumulation window.

Weight decay applies to matrices only (biases, norms, scalars and embeddings' 1-D parameters are not decayed). Every
parameter group carries a ``name`` (``"tower"``/``"rest"`` × ``"decay"``/``"no_decay"``) so a state dict reloads into
groups built the same way.
"""

import math
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["build_optimizer", "cosine_with_warmup", "clip_and_step", "warmup_steps_for"]


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    tower_lr: float | None = None,
    is_tower: Callable[[str], bool] = lambda name: False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; names for which ``is_tower`` holds get ``tower_lr`` (default ``lr``)."""
    groups: dict[tuple[str, str], list[nn.Parameter]] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        part = "tower" if is_tower(name) else "rest"
        decay = "decay" if parameter.ndim >= 2 else "no_decay"
        groups.setdefault((part, decay), []).append(parameter)
    if not groups:
        raise ValueError("no trainable parameters: every part of the model is frozen (check train.trainable.*)")
    parameter_groups = []
    for (part, decay), parameters in sorted(groups.items()):
        parameter_groups.append(
            {
                "name": f"{part}.{decay}",
                "params": parameters,
                "lr": (tower_lr if tower_lr is not None else lr) if part == "tower" else lr,
                "weight_decay": weight_decay if decay == "decay" else 0.0,
            }
        )
    return torch.optim.AdamW(parameter_groups, lr=lr, betas=betas, eps=eps, foreach=False)


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Number of warmup steps: ``ceil(warmup_ratio * total_steps)`` (HF convention)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"train.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return math.ceil(warmup_ratio * total_steps)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_ratio`` × base lr at ``total_steps``.

    Step k (1-based, the k-th optimizer step) uses the factor for k − 1, as in HF ``get_cosine_schedule_with_warmup``.
    """
    if total_steps <= 0:
        raise ValueError(f"the schedule needs a positive number of steps, got {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1) if warmup_steps > 0 else 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_ratio + (1.0 - min_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_and_step(
    parameters: Iterable[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    max_grad_norm: float,
) -> float:
    """Clip the accumulated gradients to ``max_grad_norm`` (0 = no clipping), step optimizer and schedule, zero the
    gradients; returns the pre-clipping global gradient norm (sharded DTensor gradients are reduced over ranks)."""
    parameters = [p for p in parameters if p.requires_grad and p.grad is not None]
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(parameters, limit) if parameters else torch.zeros(())
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
