"""Images of a chat request: ``data:image/...;base64,`` URIs (or, with ``--allow-local-images DIR``, files inside DIR)
decoded to 8-bit RGB with every limit checked before the pixels are decoded.

Order of checks: the URI form, the base64 length (before decoding it), the decoded size, then
``rsfuse.data.load_image``: the safe opener (PNG, JPEG, TIFF, WEBP, BMP, JPEG2000 only, decoded in-process) reads the
header and checks width × height against ``max_image_pixels`` and width × height × bands against
``max_image_samples`` before any pixel is decoded; every remote-sensing mode is converted or refused explicitly.
Any failure is a 400 naming the field. An ``rsfuse-upload:`` id names an image the page uploaded before
(`rsfuse.serve.uploads`).
"""

import base64
import binascii
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from rsfuse.serve.errors import APIError, bad_request
from rsfuse.serve.limits import ServeLimits
from rsfuse.serve.uploads import UPLOAD_PREFIX, ImageStore

__all__ = ["decode_image"]


def decode_image(url: str, *, param: str, limits: ServeLimits, local_root: Path | None = None,
                 uploads: ImageStore | None = None) -> Image.Image:
    """The RGB image that ``url`` (a data URI, an upload id of ``uploads``, or a local path under ``local_root``)
    holds."""
    if url.startswith(UPLOAD_PREFIX) and uploads is not None:
        image = uploads.get(url)
        if image is None:
            raise bad_request("this uploaded image is no longer held by the server; upload it again", param,
                              "upload_expired")
        return image
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
    unavailable = bad_request("no such image file inside the folder given to --allow-local-images", param,
                              "invalid_image_url")  # one answer for missing and outside: nothing about other files
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise unavailable from None
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        raise unavailable
    return resolved


def _load_bytes(data: bytes, *, param: str, limits: ServeLimits) -> Image.Image:
    """``rsfuse.data.load_image`` on a private temporary copy: the safe opener reads the header (format,
    width × height, bands) and checks the limits before any pixel is decoded, then every mode becomes 8-bit RGB."""
    from rsfuse.data.images import ImageLoadError, load_image  # noqa: PLC0415

    handle, name = tempfile.mkstemp(prefix="rsfuse-serve-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        image = load_image(name, max_pixels=limits.max_image_pixels, max_samples=limits.max_image_samples)
        image.load()
        return image
    except ImageLoadError as error:
        raise _refusal(error.reason, param) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:  # decoders' own failures
        raise bad_request(f"cannot decode this image ({type(error).__name__})", param, "invalid_image") from None
    finally:
        os.unlink(name)


def _refusal(reason: str, param: str) -> APIError:
    """The loader's reason in the API's words (its ``bands=`` argument is the library's, not the request's)."""
    bands = re.match(r"(\d+)-band (\w+)", reason)
    if bands and "bands=" in reason:
        return bad_request(f"a {bands.group(1)}-band {bands.group(2)} image: the model takes RGB; send 3 of its "
                           "bands (red, green, blue) saved as an RGB image", param,
                           "unsupported_bands")
    if "limit" in reason or "bomb" in reason:
        return APIError(400, f"cannot use this image: {reason}", param=param, code="image_too_large")
    return bad_request(f"cannot use this image: {reason}", param, "invalid_image")
