"""CLIP preprocessing as LLaVA-1.5 does it (``ImageProcessor``): pad to a square, resize, normalise.

Two equal implementations of the resize and normalisation: torchvision's ``transforms.v2`` (``backend="torchvision"``,
the default where torchvision imports) and a torchvision-free one (``backend="torch"``: PIL → numpy → torch, the
kernels torchvision calls on a CPU uint8 image — torch's antialiased bicubic ``interpolate`` on the uint8 channels-last
view, then ``× 1/255``, ``− mean``, ``/ std`` in float32), used where torchvision is absent (e.g. beside a torch build
no torchvision wheel matches). ``tests/test_images.py`` checks the two give the same pixels, bit for bit.
"""

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rsfuse._typing import Float, Tensor, UInt8, typecheck
from rsfuse.data.images import CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, load_image, to_rgb

try:
    from torchvision.transforms import InterpolationMode, v2
except ImportError:  # torchvision absent: backend="torch"
    v2 = None

__all__ = ["ImageProcessor", "PREPROCESS_BACKENDS"]

PREPROCESS_BACKENDS = ("torchvision", "torch")


def _pil_to_uint8(image: Image.Image) -> Tensor:
    """``[3, H, W]`` uint8 of an RGB image (a channels-last view, as torchvision's ``PILToTensor`` gives it)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _resize_uint8(pixels: Tensor, size: int) -> Tensor:
    """Antialiased bicubic resize of ``[3, H, W]`` uint8 to ``size × size`` as torchvision's ``v2.Resize`` does it on
    the CPU: torch's native uint8 kernel on the channels-last view (float32 + clamp + round where the kernel does not
    take uint8)."""
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    batch = pixels.unsqueeze(0)
    try:
        out = F.interpolate(batch, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
    except RuntimeError:  # no uint8 kernel on this build
        out = F.interpolate(batch.to(torch.float32), size=[size, size], mode="bicubic", align_corners=False,
                            antialias=True).clamp_(min=0, max=255).round_().to(torch.uint8)
    return out[0]


class ImageProcessor:
    """CLIP preprocessing as LLaVA does it: pad to a square with the mean colour (image centred), bicubic
    antialiased resize to ``image_size``, scale to [0, 1], normalise with ``mean``/``std``.

    ``processor(image)`` takes a PIL image (any mode ``load_image`` accepts is converted first) or a path and returns
    ``[3, image_size, image_size]`` float32.
    """

    def __init__(
        self,
        image_size: int,
        *,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: str | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values, std positive; got mean={mean}, std={std}")
        self.image_size = image_size
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.max_pixels = max_pixels
        self.background = tuple(int(value * 255) for value in self.mean)
        backend = backend or ("torchvision" if v2 is not None else "torch")
        if backend not in PREPROCESS_BACKENDS:
            raise ValueError(f"backend must be one of {PREPROCESS_BACKENDS}, got {backend!r}")
        if backend == "torchvision" and v2 is None:
            raise ValueError("backend 'torchvision': torchvision is not installed (backend='torch' needs no torchvision)")
        self.backend = backend
        if backend == "torchvision":
            self.resize = v2.Compose(
                [
                    v2.PILToTensor(),
                    v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC, antialias=True),
                ]
            )
            self.normalize = v2.Compose(
                [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(self.mean), std=list(self.std))]
            )
        else:
            self.resize = lambda image: _resize_uint8(_pil_to_uint8(image), image_size)
            self.normalize = self._normalize

    def _normalize(self, pixels: Tensor) -> Tensor:
        """``uint8 → float32 × 1/255``, then ``(x − mean) / std`` per channel (torchvision's float32 steps)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return pixels.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)

    def pad_to_square(self, image: Image.Image) -> Image.Image:
        """LLaVA's ``expand2square``: the image centred on a square of the mean colour."""
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), self.background)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas

    @typecheck
    def __call__(self, image: Image.Image | str | Path) -> Float[Tensor, "3 size size"]:
        return self.normalize(self.resized(image)).contiguous()

    @typecheck
    def resized(self, image: Image.Image | str | Path) -> UInt8[Tensor, "3 size size"]:
        """The first half of ``__call__``: padded and resized, still ``uint8`` (a quarter of the float32 memory);
        ``self.normalize`` of it (any leading batch axes) is exactly what ``__call__`` returns."""
        if isinstance(image, (str, Path)):
            image = load_image(image, max_pixels=self.max_pixels)
        elif image.mode != "RGB":
            image = to_rgb(Path(getattr(image, "filename", "") or "<in-memory image>"), image)
        return self.resize(self.pad_to_square(image))

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size}, mean={self.mean}, std={self.std}, backend={self.backend!r})"
