"""Data order: which samples each optimizer step of each process sees, a function of (seed, epoch) only."""

from typing import Sequence

import torch

__all__ = ["epoch_order", "micro_batches_for_step", "IndexBatches"]


def epoch_order(num_samples: int, *, seed: int, epoch: int) -> list[int]:
    """The sample order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_batches_for_step(
    order: Sequence[int], step_in_epoch: int, *, batch_size: int, grad_accum: int, world_size: int, rank: int
) -> list[list[int]]:
    """This rank's micro-batches for optimizer step ``step_in_epoch`` (0-based) of an epoch.

    The global batch of a step is ``batch_size × world_size × grad_accum`` consecutive samples of ``order``;
    micro-batch m is its m-th slice of ``batch_size × world_size`` samples, of which this rank takes slice ``rank``.
    One process with ``batch_size × world_size`` sees exactly the same global micro-batches.
    """
    per_micro = batch_size * world_size
    start = step_in_epoch * per_micro * grad_accum
    batches = []
    for micro in range(grad_accum):
        offset = start + micro * per_micro + rank * batch_size
        batches.append(list(order[offset : offset + batch_size]))
    return batches


class IndexBatches(torch.utils.data.Sampler):
    """A fixed list of index lists, for ``DataLoader(batch_sampler=...)``."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
