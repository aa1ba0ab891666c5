"""Images the page uploads once per conversation: ``POST /v1/rsfuse/uploads`` decodes and checks an image (the same
limits as a chat request), keeps it here and answers an id, ``rsfuse-upload:<hex>``, that later requests (follow-up
questions, the pictures) name as their ``image_url`` instead of sending the bytes again; and a preview the browser
can draw (PNG of the 8-bit RGB image the model receives: a TIFF, which browsers cannot show, included).

The store is least-recently-used and bounded by the total pixels it holds; an id that fell out is a 400 asking to
upload the image again.
"""

import base64
import hashlib
import io
import threading
from collections import OrderedDict

from PIL import Image

__all__ = ["UPLOAD_PREFIX", "ImageStore", "preview_data_uri"]

UPLOAD_PREFIX = "rsfuse-upload:"
PREVIEW_SIDE = 512


class ImageStore:
    """Decoded upload images by id (a hash of the file's bytes), at most ``max_pixels`` in all (always one)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(data: bytes) -> str:
        return UPLOAD_PREFIX + hashlib.sha256(data).hexdigest()[:32]

    def put(self, key: str, image: Image.Image) -> None:
        with self._lock:
            self._images[key] = image
            self._images.move_to_end(key)
            while len(self._images) > 1 and sum(i.width * i.height for i in self._images.values()) > self.max_pixels:
                self._images.popitem(last=False)

    def get(self, key: str) -> Image.Image | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def __len__(self) -> int:
        return len(self._images)


def preview_data_uri(image: Image.Image, side: int = PREVIEW_SIDE) -> str:
    """A PNG data URI of ``image`` (RGB) scaled to at most ``side`` pixels a side."""
    small = image.copy()
    small.thumbnail((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
