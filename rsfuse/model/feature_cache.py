"""``VisionFeatureCache``: reuse a frozen tower's features of images seen before (training with a frozen tower).

With the tower frozen, an image's global features and detail stacks (before the projector) are a fixed function of
its pixels; the 59 tower passes per image of the two-scale canvas then dominate a small model's training step. The
cache keys each sample by a digest of its pixel bytes, encodes only the samples it has not seen (one batched call) and
keeps the features on their device. It refuses to work while any tower parameter requires a gradient.
"""

import hashlib
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["VisionFeatureCache"]

Encoder = Callable[[Tensor], tuple[Tensor, Tensor | None]]


class VisionFeatureCache:
    """Per-image ``(global [N, C], stacks [K, N, C] or None)`` keyed by the BLAKE2 digest of the pixel bytes."""

    def __init__(self, tower: nn.Module, *, max_images: int = 1_000_000) -> None:
        self.tower = tower
        self.max_images = max_images
        self.entries: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _check_frozen(self) -> None:
        trainable = [name for name, parameter in self.tower.named_parameters() if parameter.requires_grad]
        if trainable:
            raise ValueError(f"VisionFeatureCache: the vision tower is not frozen ({len(trainable)} parameters require "
                             f"gradients, e.g. {trainable[0]!r}); cached features would go stale")

    @staticmethod
    def digest(pixels: Tensor) -> bytes:
        """Digest of one sample's pixels (shape, dtype and bytes)."""
        array = pixels.detach().to("cpu").contiguous()
        header = f"{tuple(array.shape)}{array.dtype}".encode()
        return hashlib.blake2b(header + array.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()

    def lookup(self, pixels: Tensor, encode: Encoder) -> tuple[Tensor, Tensor | None]:
        """Features of ``pixels [B, 3, S, S]``: cached rows as they are, the others from ``encode`` (one call)."""
        self._check_frozen()
        keys = [self.digest(sample) for sample in pixels]
        missing = [index for index, key in enumerate(keys) if key not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        if missing:
            with torch.no_grad():
                global_features, stacks = encode(pixels[missing])
            for row, index in enumerate(missing):
                fresh[keys[index]] = (global_features[row], None if stacks is None else stacks[row])
            if len(self.entries) + len(fresh) <= self.max_images:
                self.entries.update(fresh)
        rows = [self.entries.get(key) or fresh[key] for key in keys]
        global_features = torch.stack([row[0] for row in rows])
        stacks = None if rows[0][1] is None else torch.stack([row[1] for row in rows])
        return global_features, stacks
