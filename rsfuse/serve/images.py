"""Images of a chat request: ``data:image/...;base64,`` URIs (or, with ``--allow-local-images DIR``, files inside DIR)
decoded to 8-bit RGB with every limit checked before the pixels are decoded.

Order of checks: the URI form, the base64 length (before decoding it), the decoded size, the header (format and
width × height against ``max_image_pixels``), then the full decode through ``rsfuse.data.load_image`` (every
remote-sensing mode converted or refused explicitly). Any failure is a 400 naming the field.
"""

import base64
import binascii
import io
import os
import tempfile
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from rsfuse.serve.errors import APIError, bad_request
from rsfuse.serve.limits import ServeLimits

__all__ = ["decode_image"]


def decode_image(url: str, *, param: str, limits: ServeLimits, local_root: Path | None = None) -> Image.Image:
    """The RGB image that ``url`` (a data URI, or a local path under ``local_root``) holds."""
    if url.startswith("data:"):
        data = _data_uri_bytes(url, param=param, limits=limits)
        return _load_bytes(data, param=param, limits=limits)
    if local_root is None:
        raise bad_request(
            "image_url must be a data:image/...;base64, URI (remote URLs are not fetched; local files need the "
            "server's --allow-local-images)", param, "invalid_image_url",
        )
    path = _local_path(url, param=param, root=local_root)
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        raise _too_large(f"image file of {size} bytes exceeds the limit of {limits.max_image_bytes}", param)
    return _load_bytes(path.read_bytes(), param=param, limits=limits)


def _too_large(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="image_too_large")


def _data_uri_bytes(url: str, *, param: str, limits: ServeLimits) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise bad_request("malformed data URI: no ',' after the media type", param, "invalid_image_url")
    parts = header[len("data:"):].split(";")
    media = parts[0].strip().lower()
    if not media.startswith("image/"):
        raise bad_request(f"data URI media type {media or '(none)'!r} is not an image/* type", param,
                          "invalid_image_url")
    if "base64" not in (part.strip().lower() for part in parts[1:]):
        raise bad_request("data URI must be base64-encoded (data:image/...;base64,...)", param, "invalid_image_url")
    payload = payload.strip()
    if len(payload) // 4 * 3 > limits.max_image_bytes + 3:
        raise _too_large(f"image of about {len(payload) // 4 * 3} bytes exceeds the limit of "
                         f"{limits.max_image_bytes}", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"invalid base64 image data ({error})", param, "invalid_base64") from None
    if not data:
        raise bad_request("empty image data", param, "invalid_image")
    if len(data) > limits.max_image_bytes:
        raise _too_large(f"image of {len(data)} bytes exceeds the limit of {limits.max_image_bytes}", param)
    return data


def _local_path(url: str, *, param: str, root: Path) -> Path:
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise bad_request(f"image_url scheme {parsed.scheme!r} is not served (use a data URI or a local path)",
                          param, "invalid_image_url")
    raw = unquote(parsed.path) if parsed.scheme == "file" else url
    candidate = Path(raw)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise bad_request("local image not found under the allowed folder", param, "invalid_image_url") from None
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        raise bad_request("local image path is outside the folder given to --allow-local-images", param,
                          "invalid_image_url")
    return resolved


def _load_bytes(data: bytes, *, param: str, limits: ServeLimits) -> Image.Image:
    """Header first (format, size), then the full decode by ``load_image`` from a private temporary file."""
    from rsfuse.data.images import ImageLoadError, load_image  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height, kind = header.width, header.height, header.format or "image"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(f"image exceeds the limit of {limits.max_image_pixels} pixels (decompression bomb?)",
                         param) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise bad_request(f"not a readable image ({type(error).__name__})", param, "invalid_image") from None
    if width < 1 or height < 1:
        raise bad_request(f"image of {width}x{height} pixels is empty", param, "invalid_image")
    if width * height > limits.max_image_pixels:
        raise _too_large(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{limits.max_image_pixels}", param)
    handle, name = tempfile.mkstemp(prefix="rsfuse-serve-", suffix=f".{kind.lower()}")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        image = load_image(name, max_pixels=limits.max_image_pixels)
        image.load()
        return image
    except ImageLoadError as error:
        raise bad_request(f"cannot use this {kind} image: {error.reason}", param, "invalid_image") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:  # decoders' own failures
        raise bad_request(f"cannot decode this {kind} image ({type(error).__name__})", param,
                          "invalid_image") from None
    finally:
        os.unlink(name)
