"""Length-grouped sampling (LLaVA's ``LengthGroupedSampler``), seeded, epoch-aware and resumable mid-epoch.

One epoch's order: shuffle all indices; cut them into megabatches of ``world_size * batch_size``; sort each megabatch
by length, longest first; split it into ``world_size`` batches of near-equal total length. With
``group_by_modality`` image and text-only samples are grouped separately, their full megabatches shuffled together,
and the two leftover partial megabatches form one last megabatch (as LLaVA does, but every shuffle here uses the seeded
generator, so an epoch's order depends only on ``seed`` and ``epoch``).

Resuming: ``set_epoch(e)`` then ``skip(n)`` yields the same order as a fresh run of epoch ``e`` minus its first ``n``
indices; ``state_dict()`` / ``load_state_dict()`` carry ``seed``, ``epoch`` and ``skip``.
"""

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["LengthGroupedSampler", "length_grouped_indices"]


def _split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` (sorted longest first) into ``num_chunks`` equal-size chunks, each to the shortest so far."""
    if len(indices) % num_chunks:
        return [indices[rank::num_chunks] for rank in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for index in indices:
        target = min((rank for rank in range(num_chunks) if len(chunks[rank]) < per_chunk), key=totals.__getitem__)
        chunks[target].append(index)
        totals[target] += lengths[index]
    return chunks


def _grouped(
    positions: list[int], lengths: Sequence[int], megabatch_size: int, world_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Megabatches of ``positions`` (shuffled, each sorted by length and balanced across ranks)."""
    order = [positions[i] for i in torch.randperm(len(positions), generator=generator).tolist()]
    megabatches = []
    for start in range(0, len(order), megabatch_size):
        megabatch = sorted(order[start : start + megabatch_size], key=lambda index: lengths[index], reverse=True)
        chunks = _split_to_even_chunks(megabatch, lengths, world_size)
        megabatches.append([index for chunk in chunks for index in chunk])
    return megabatches


def length_grouped_indices(
    lengths: Sequence[int],
    *,
    batch_size: int,
    world_size: int = 1,
    generator: torch.Generator,
    has_image: Sequence[bool] | None = None,
) -> list[int]:
    """One epoch's order (see the module docstring); with ``has_image`` the two modalities are grouped apart."""
    megabatch_size = batch_size * world_size
    if has_image is None:
        megabatches = _grouped(list(range(len(lengths))), lengths, megabatch_size, world_size, generator)
        return [index for megabatch in megabatches for index in megabatch]
    if len(has_image) != len(lengths):
        raise ValueError(f"has_image has {len(has_image)} entries for {len(lengths)} lengths")
    image_positions = [index for index, flag in enumerate(has_image) if flag]
    text_positions = [index for index, flag in enumerate(has_image) if not flag]
    image_megabatches = _grouped(image_positions, lengths, megabatch_size, world_size, generator)
    text_megabatches = _grouped(text_positions, lengths, megabatch_size, world_size, generator)
    leftovers: list[int] = []
    full: list[list[int]] = []
    for megabatches in (image_megabatches, text_megabatches):
        if megabatches and len(megabatches[-1]) < megabatch_size:
            leftovers.extend(megabatches.pop())
        full.extend(megabatches)
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    if leftovers:
        full.append(sorted(leftovers, key=lambda index: lengths[index], reverse=True))
    return [index for megabatch in full for index in megabatch]


class LengthGroupedSampler(Sampler[int]):
    """Yields dataset indices grouped by length; deterministic for ``(seed, epoch)``; resumable with ``skip``."""

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        has_image: Sequence[bool] | None = None,
        group_by_modality: bool = False,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be positive, got {batch_size}, {world_size}")
        if group_by_modality and has_image is None:
            raise ValueError("group_by_modality=True needs has_image (one flag per sample)")
        self.lengths = [int(length) for length in lengths]
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.has_image = list(has_image) if group_by_modality else None
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle) and start it from the beginning."""
        self.epoch = epoch
        self.skipped = 0

    def skip(self, count: int) -> None:
        """Start the current epoch after its first ``count`` indices (restoring a saved data position)."""
        if not 0 <= count <= len(self.lengths):
            raise ValueError(f"cannot skip {count} of {len(self.lengths)} samples")
        self.skipped = count

    def epoch_indices(self) -> list[int]:
        """The whole order of the current epoch, ignoring ``skip``."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return length_grouped_indices(
            self.lengths,
            batch_size=self.batch_size,
            world_size=self.world_size,
            generator=generator,
            has_image=self.has_image,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.skipped :])

    def __len__(self) -> int:
        return len(self.lengths) - self.skipped

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "skip": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
        self.skip(int(state["skip"]))
