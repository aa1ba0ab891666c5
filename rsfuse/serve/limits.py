"""What one request may ask of the server (``rsfuse serve`` flags set them); each breach is a 4xx naming the field."""

from dataclasses import dataclass

__all__ = ["ServeLimits"]


@dataclass(frozen=True, kw_only=True)
class ServeLimits:
    """Per-request limits.

    ``max_body_bytes``: the raw HTTP body (413 beyond it; the base64 images are inside it).
    ``max_image_bytes``: one decoded image file. ``max_image_pixels``: width × height read from the image header
    before any pixel is decoded (decompression bombs); ``max_image_samples``: width × height × bands, from the
    header too (a many-band TIFF; None: four times ``max_image_pixels``). ``max_images``: images per request (the
    model takes one per conversation). ``max_messages``, ``max_stop``/``max_stop_chars``: the conversation and the stop strings.
    The prompt (text + visual tokens) and ``max_tokens`` are bounded by the server's cache length, not here.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    max_image_samples: int | None = None
    max_images: int = 1
    max_messages: int = 256
    max_stop: int = 4
    max_stop_chars: int = 256

    def __post_init__(self) -> None:
        if self.max_image_samples is None:
            object.__setattr__(self, "max_image_samples", 4 * self.max_image_pixels)
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_image_samples", "max_images",
                     "max_messages", "max_stop", "max_stop_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeLimits.{name} must be a positive int, got {value!r}")
