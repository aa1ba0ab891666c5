"""CLIP preprocessing as LLaVA-1.5 does it (``ImageProcessor``): pad to a square, resize, normalise."""

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from rsfuse._typing import Float, Tensor, UInt8, typecheck
from rsfuse.data.images import CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, load_image, to_rgb

__all__ = ["ImageProcessor"]


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
        self.resize = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC, antialias=True),
            ]
        )
        self.normalize = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(self.mean), std=list(self.std))]
        )

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
        return f"ImageProcessor(image_size={self.image_size}, mean={self.mean}, std={self.std})"
