"""Image loading for remote-sensing data (every PIL mode converted or refused explicitly); CLIP preprocessing is
`rsfuse.data.preprocess`.

``load_image`` returns an 8-bit RGB ``PIL.Image``:

======================  ==========================================================================================
mode / file             conversion
======================  ==========================================================================================
RGB (8 bits)            as is
RGBX, L, 1, CMYK,       PIL's conversion to RGB (grey is replicated; RGBX drops its padding byte)
YCbCr, P                (a palette with a transparent entry is treated like RGBA)
RGBA, LA, PA, RGBa, La  alpha-composited on the CLIP mean colour (0.48145466, 0.4578275, 0.40821073) * 255
I;16, I;16L, I;16B,     stretched to 8 bits between the image's 2nd and 98th percentiles (NaN/inf -> 0),
I;16N, I, F             then replicated to grey RGB
16-bit RGB / RGBA /     read with all their bits (PNG: ``pypng``; TIFF: ``tifffile``) and stretched like one band:
grey+alpha PNG, TIFF    one 2-98 % stretch taken jointly over the colour bands (their balance is kept); alpha is
of > 8 bits or float    scaled to 8 bits and composited as above
with 2-3 colour bands
TIFF with > 3 bands     refused unless ``bands=(r, g, b)`` names the bands to show (read with ``tifffile``,
(alpha excepted)        an optional dependency: ``pip install rsfuse[tiff]``); uint8 bands are used as is,
                        others stretched jointly by the 2-98 % percentiles of the three chosen bands
anything else           refused, naming the mode
======================  ==========================================================================================

Every image of more than 8 bits per sample or of floats therefore goes through the same stretch
(`stretch_to_uint8`): for one band over that band, for several over all colour bands together.

`probe_image` checks a file cheaply (exists, header readable, size within ``max_pixels``; a multi-band TIFF needs
``bands``) without decoding its pixels: the training recipe runs it over every sample before the first step.

Missing, truncated or corrupt files and images over ``max_pixels`` (decompression bombs; PIL's own
``DecompressionBombWarning`` is turned into an error as well) or over ``max_samples`` (width × height × bands, default
four times ``max_pixels``: a many-band TIFF; checked from the header, before decoding) raise :class:`ImageLoadError`
naming the file.

Untrusted bytes are opened only by `open_image`, with the raster formats of `SAFE_FORMATS` (PNG, JPEG, TIFF, WEBP,
BMP, JPEG2000), all decoded in-process: never by PIL's EPS plugin (which runs Ghostscript) or any other format
identified from the bytes. Every reader here (``load_image``, ``probe_image``) goes through it.
"""

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "SAFE_FORMATS",
    "default_max_samples",
    "load_image",
    "open_image",
    "probe_image",
    "stretch_to_uint8",
    "to_rgb",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's own warning threshold (about 9459 x 9459); pass a larger ``max_pixels`` for big scenes deliberately."""

SAMPLES_PER_PIXEL_LIMIT = 4
"""The default ``max_samples`` is this many times ``max_pixels`` (an RGBA image of ``max_pixels`` pixels fits)."""
SAFE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "JPEG2000")
"""The only formats PIL may open: raster formats decoded in-process (no plugin that calls an external program)."""
POSTSCRIPT_MAGIC = (b"%!PS", b"\xc5\xd0\xd3\xc6")

CLIP_MEAN_RGB: tuple[int, int, int] = tuple(int(channel * 255) for channel in CLIP_MEAN)  # LLaVA's expand2square colour

PIL_TO_RGB_MODES = frozenset({"RGBX", "L", "1", "CMYK", "YCbCr"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_EXTRA_SAMPLES = frozenset({1, 2})  # TIFF ExtraSamples: associated / unassociated alpha
TIFF_SAMPLES_PER_PIXEL = 277
TIFF_EXTRA_SAMPLES = 338
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_BITS_PER_SAMPLE = 258
TIFF_SAMPLE_FORMAT = 339
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_16BIT_COLOUR_TYPES = frozenset({2, 4, 6})  # RGB, grey + alpha, RGBA


class ImageLoadError(ValueError):
    """An image file cannot be loaded as RGB; the message names the file and the reason."""

    def __init__(self, path: "str | Path", reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linearly map ``array`` to uint8 between its 2nd and 98th percentiles (over finite values; NaN/inf -> 0).

    If those percentiles coincide the min/max are used; a constant image becomes 0.
    """
    values = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = np.percentile(values[finite], [2.0, 98.0])
    if high <= low:
        low, high = values[finite].min(), values[finite].max()
    scale = 255.0 / (high - low) if high > low else 0.0
    stretched = np.clip((values - low) * scale, 0.0, 255.0)
    return np.where(finite, np.rint(stretched), 0.0).astype(np.uint8)


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) in TIFF_MAGIC


def _is_multiband_tiff(image: Image.Image) -> bool:
    """More than 3 samples per pixel, other than RGB/grey + alpha and CMYK."""
    tags = getattr(image, "tag_v2", {})
    samples = int(tags.get(TIFF_SAMPLES_PER_PIXEL, len(image.getbands())))
    if samples <= 3 or image.mode == "CMYK" and samples == 4:
        return False
    extra = tags.get(TIFF_EXTRA_SAMPLES, ())
    extra = (extra,) if isinstance(extra, int) else tuple(extra)
    color_samples = samples - sum(1 for kind in extra if kind in ALPHA_EXTRA_SAMPLES)
    return color_samples > 3


def _is_deep_multisample_tiff(image: Image.Image) -> bool:
    """Several samples per pixel of more than 8 bits or floats (PIL would keep only 8 bits of each)."""
    tags = getattr(image, "tag_v2", {})
    samples = int(tags.get(TIFF_SAMPLES_PER_PIXEL, len(image.getbands())))
    bits = tags.get(TIFF_BITS_PER_SAMPLE, 8)
    bits = (bits,) if isinstance(bits, int) else tuple(bits)
    formats = tags.get(TIFF_SAMPLE_FORMAT, 1)
    formats = (formats,) if isinstance(formats, int) else tuple(formats)
    return samples > 1 and (max(bits, default=8) > 8 or any(int(kind) == 3 for kind in formats))


def default_max_samples(max_pixels: int) -> int:
    """The samples limit (width × height × bands) used when none is given: four times ``max_pixels``."""
    return SAMPLES_PER_PIXEL_LIMIT * max_pixels


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(
            path, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
        )


def _check_samples(path: "Path | str", width: int, height: int, bands: int, max_samples: int) -> None:
    if width * height * bands > max_samples:
        raise ImageLoadError(
            path, f"{width}x{height} pixels x {bands} bands = {width * height * bands} samples exceeds the limit of "
                  f"{max_samples} (decompression bomb?)"
        )


def _header_bands(image: Image.Image) -> int:
    """Samples per pixel from the header: TIFF's SamplesPerPixel, else the mode's bands."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None and TIFF_SAMPLES_PER_PIXEL in tags:
        return max(1, int(tags[TIFF_SAMPLES_PER_PIXEL]))
    return len(image.getbands())


def _select_bands(path: Path, array: np.ndarray, bands: Sequence[int]) -> Image.Image:
    """``array`` is ``[H, W, C]``; pick ``bands`` as R, G, B and bring them to 8 bits."""
    if len(bands) != 3 or not all(isinstance(band, (int, np.integer)) for band in bands):
        raise ImageLoadError(path, f"bands must be three band indices (r, g, b), got {bands!r}")
    count = array.shape[-1]
    if not all(0 <= band < count for band in bands):
        raise ImageLoadError(path, f"bands {tuple(bands)} out of range for an image with {count} bands")
    chosen = array[..., list(bands)]
    rgb = chosen if chosen.dtype == np.uint8 else stretch_to_uint8(chosen)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def _series_samples(axes: str, shape: Sequence[int]) -> int:
    count = 1
    for axis, size in zip(axes, shape):
        if axis not in "YX":
            count *= int(size)
    return count


def _read_tiff_array(path: Path, max_pixels: int, max_samples: int | None = None) -> tuple[np.ndarray, int]:
    """A TIFF through ``tifffile``: its first series as ``[H, W]`` or ``[H, W, C]`` and how many of the last bands
    are alpha (TIFF ExtraSamples 1/2)."""
    try:
        import tifffile
    except ImportError:
        raise ImageLoadError(
            path, "a TIFF PIL cannot read as RGB (multi-band?) needs tifffile: pip install tifffile (rsfuse[tiff])"
        ) from None
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, shape = series.axes, series.shape
            if "Y" not in axes or "X" not in axes:
                raise ImageLoadError(path, f"TIFF series with axes {axes!r} has no Y/X plane")
            width, height = shape[axes.index("X")], shape[axes.index("Y")]
            _check_pixels(path, width, height, max_pixels)
            _check_samples(path, width, height, _series_samples(axes, shape),
                           default_max_samples(max_pixels) if max_samples is None else max_samples)
            extra = tuple(tiff.pages[0].extrasamples or ())
            array = series.asarray()
    except ImageLoadError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise ImageLoadError(path, f"unreadable TIFF ({type(error).__name__}: {error})") from None
    other_axes = [index for index, axis in enumerate(axes) if axis not in "YX" and shape[index] > 1]
    if len(other_axes) > 1:
        raise ImageLoadError(path, f"TIFF with axes {axes!r} and shape {shape}: expected one band axis")
    band_axis = other_axes[0] if other_axes else None
    keep = [axes.index("Y"), axes.index("X")] + ([band_axis] if band_axis is not None else [])
    order = keep + [index for index in range(len(shape)) if index not in keep]  # the rest have size 1
    array = np.transpose(np.reshape(array, shape), order)
    array = np.reshape(array, array.shape[: len(keep)])
    alphas = sum(1 for kind in extra if int(kind) in ALPHA_EXTRA_SAMPLES) if array.ndim == 3 else 0
    return array, alphas


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, None for other files."""
    with path.open("rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or not head.startswith(PNG_MAGIC) or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png16(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    """A 16-bit colour or grey+alpha PNG with all its bits (``pypng``; PIL keeps only the high byte of these):
    ``[H, W, C]`` uint16 and how many of the last bands are alpha."""
    try:
        import png
    except ImportError:
        raise ImageLoadError(path, "a 16-bit colour PNG needs pypng to keep its bits: pip install pypng") from None
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        _check_pixels(path, width, height, max_pixels)
        planes = int(info["planes"])
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    except ImageLoadError:
        raise
    except Exception as error:  # png.FormatError, png.ChunkError, zlib.error, ValueError, ...
        raise ImageLoadError(path, f"truncated or corrupt 16-bit PNG ({type(error).__name__}: {error})") from None
    return array, int(bool(info.get("alpha")))


def _alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha
    if np.issubdtype(alpha.dtype, np.integer):
        scaled = alpha.astype(np.float64) * (255.0 / np.iinfo(alpha.dtype).max)
    else:
        scaled = np.nan_to_num(alpha.astype(np.float64), nan=0.0) * 255.0
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _from_array(path: Path, array: np.ndarray, bands: Sequence[int] | None, alphas: int, kind: str) -> Image.Image:
    """An image read as ``[H, W]`` / ``[H, W, C]`` (the last ``alphas`` bands alpha) to 8-bit RGB: ``bands`` picked
    if given; else 1 or 3 colour bands, uint8 as is, anything else through one joint 2-98 % stretch."""
    if bands is not None:
        if array.ndim == 2:
            raise ImageLoadError(path, f"bands={tuple(bands)} given for a single-band {kind}")
        return _select_bands(path, array, bands)
    if array.ndim == 2:
        array = array[..., None]
    colour_count = array.shape[-1] - alphas
    if colour_count not in (1, 3) or alphas > 1:
        raise ImageLoadError(
            path, f"{array.shape[-1]}-band {kind} ({array.dtype}); pass bands=(r, g, b) to choose which bands are "
                  "red, green, blue"
        )
    colour = array[..., :colour_count]
    colour = colour if colour.dtype == np.uint8 else stretch_to_uint8(colour)
    if colour_count == 1:
        colour = np.repeat(colour, 3, axis=-1)
    rgb = Image.fromarray(np.ascontiguousarray(colour), mode="RGB")
    if not alphas:
        return rgb
    rgba = np.concatenate([colour, _alpha_to_uint8(array[..., -1])[..., None]], axis=-1)
    return _composite(Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA"))


def _read_tiff_bands(
    path: Path, bands: Sequence[int] | None, max_pixels: int, multiband_bands: Sequence[int] | None = None,
    max_samples: int | None = None,
) -> Image.Image:
    """A TIFF PIL cannot read faithfully (more than 3 bands, more than 8 bits per colour sample, floats)."""
    array, alphas = _read_tiff_array(path, max_pixels, max_samples)
    if bands is None and multiband_bands is not None and array.ndim == 3 and array.shape[-1] - alphas > 3:
        bands = multiband_bands
    return _from_array(path, array, bands, alphas, "TIFF")


def to_rgb(path: Path, image: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any supported mode to RGB (see the module table)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "P":
        return _composite(image.convert("RGBA")) if "transparency" in image.info else image.convert("RGB")
    if mode in PIL_TO_RGB_MODES:
        return image.convert("RGB")
    if mode in ALPHA_MODES:
        return _composite(image.convert("RGBA"))
    if mode in HIGH_DEPTH_MODES:
        grey = stretch_to_uint8(np.asarray(image))
        return Image.fromarray(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1)), mode="RGB")
    raise ImageLoadError(path, f"unsupported image mode {mode!r} (bands {image.getbands()})")


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, CLIP_MEAN_RGB + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _unidentified_reason(head: bytes) -> str:
    if head.startswith(POSTSCRIPT_MAGIC):
        return "PostScript/EPS is not an accepted image format (accepted: " + ", ".join(SAFE_FORMATS) + ")"
    return "not a recognised image file (corrupt, or not one of " + ", ".join(SAFE_FORMATS) + ")"


def open_image(
    source: "str | Path | bytes | BinaryIO",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_samples: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """PIL's lazy image of ``source`` (a path, bytes or a binary file object), opened only with the in-process
    raster decoders of `SAFE_FORMATS`, with width × height checked against ``max_pixels`` and width × height ×
    bands against ``max_samples`` (default four times ``max_pixels``) from the header, before any pixel is decoded.

    The one opener for untrusted images (files and request bytes): PIL's EPS plugin (Ghostscript) and every other
    format are never tried. Raises `ImageLoadError` naming ``name`` (default: the path, or ``"image"`` for bytes)
    for a missing file, an unaccepted or unrecognised format, an empty image or one over a limit."""
    if isinstance(source, (str, Path)):
        label: "str | Path" = name or Path(source)
        if not Path(source).is_file():
            raise ImageLoadError(label, "file not found")
        with Path(source).open("rb") as handle:
            head = handle.read(16)
        fp: "str | Path | BinaryIO" = Path(source)
    else:
        label = name or "image"
        fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
        position = fp.tell()
        head = fp.read(16)
        fp.seek(position)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=list(SAFE_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(label, f"over PIL's pixel limit (decompression bomb?): {error}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, _unidentified_reason(head)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageLoadError(label, f"cannot open ({type(error).__name__}: {error})") from None
    if image.format not in SAFE_FORMATS:  # a plugin registered under another name: never decode with it
        image.close()
        raise ImageLoadError(label, f"format {image.format!r} is not accepted (accepted: {', '.join(SAFE_FORMATS)})")
    width, height = image.size
    try:
        if width < 1 or height < 1:
            raise ImageLoadError(label, f"empty image ({width}x{height})")
        _check_pixels(label, width, height, max_pixels)
        _check_samples(label, width, height, _header_bands(image),
                       default_max_samples(max_pixels) if max_samples is None else max_samples)
    except ImageLoadError:
        image.close()
        raise
    return image


def _open_image(path: Path, max_pixels: int, max_samples: int | None) -> tuple[Image.Image | None, bool]:
    """``(open_image's lazy image, is a TIFF)``; the image is None for a TIFF PIL cannot identify (tifffile reads
    it, with the same limits)."""
    if not path.is_file():
        raise ImageLoadError(path, "file not found")
    tiff = _is_tiff(path)
    try:
        return open_image(path, max_pixels=max_pixels, max_samples=max_samples), tiff
    except ImageLoadError as error:
        if tiff and error.reason.startswith("not a recognised image file"):
            return None, tiff
        raise


def load_image(
    path: "str | Path",
    *,
    bands: Sequence[int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    multiband_bands: Sequence[int] | None = None,
    max_samples: int | None = None,
) -> Image.Image:
    """Load ``path`` as an 8-bit RGB image; see the module docstring for every mode. ``bands=(r, g, b)`` picks
    bands of a multi-band file (required for TIFFs with more than 3 colour bands). ``multiband_bands`` is used only
    for images with more than 3 colour bands, the others load as usual (a data set mixing both: ``data.bands``).
    ``max_samples`` bounds width × height × bands (default four times ``max_pixels``), checked before decoding."""
    path = Path(path)
    image, tiff = _open_image(path, max_pixels, max_samples)
    if image is None:
        return _read_tiff_bands(path, bands, max_pixels, multiband_bands, max_samples)
    with image:
        _check_pixels(path, image.width, image.height, max_pixels)
        if tiff and (_is_multiband_tiff(image) or _is_deep_multisample_tiff(image)):
            return _read_tiff_bands(path, bands, max_pixels, multiband_bands, max_samples)
        header = _png_header(path) if image.format == "PNG" else None
        if header is not None and header[0] == 16 and header[1] in PNG_16BIT_COLOUR_TYPES:
            array, alphas = _read_png16(path, max_pixels)
            return _from_array(path, array, bands, alphas, "PNG")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:  # PIL's truncated/corrupt-data errors
            raise ImageLoadError(path, f"truncated or corrupt image data ({error})") from None
        if bands is not None:
            array = np.asarray(image)
            if array.ndim != 3:
                raise ImageLoadError(path, f"bands={tuple(bands)} given for a single-band {image.mode!r} image")
            return _select_bands(path, array, bands)
        return to_rgb(path, image)


def probe_image(
    path: "str | Path",
    *,
    bands: Sequence[int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    multiband_bands: Sequence[int] | None = None,
    max_samples: int | None = None,
) -> tuple[int, int]:
    """``(width, height)`` of ``path`` from its header, without decoding the pixels; raises `ImageLoadError` for a
    missing file, an unreadable header, an empty or over-``max_pixels`` image, or a multi-band TIFF without
    ``bands``, or over ``max_samples``. Data corrupt beyond the header is only found by `load_image`."""
    path = Path(path)
    image, tiff = _open_image(path, max_pixels, max_samples)
    if image is not None:
        with image:
            width, height = image.size
            deep = tiff and (_is_multiband_tiff(image) or _is_deep_multisample_tiff(image))
        if width < 1 or height < 1:
            raise ImageLoadError(path, f"empty image ({width}x{height})")
        _check_pixels(path, width, height, max_pixels)
        if not deep:
            return width, height
    return _probe_tiff(path, bands, max_pixels, multiband_bands, max_samples)


def _probe_tiff(
    path: Path, bands: Sequence[int] | None, max_pixels: int, multiband_bands: Sequence[int] | None = None,
    max_samples: int | None = None,
) -> tuple[int, int]:
    try:
        import tifffile
    except ImportError:
        raise ImageLoadError(path, "a TIFF PIL cannot read as RGB needs tifffile: pip install tifffile") from None
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, shape = series.axes, series.shape
            extra = tuple(tiff.pages[0].extrasamples or ())
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise ImageLoadError(path, f"unreadable TIFF ({type(error).__name__}: {error})") from None
    if "Y" not in axes or "X" not in axes:
        raise ImageLoadError(path, f"TIFF series with axes {axes!r} has no Y/X plane")
    width, height = shape[axes.index("X")], shape[axes.index("Y")]
    _check_pixels(path, width, height, max_pixels)
    count = _series_samples(axes, shape)
    _check_samples(path, width, height, count, default_max_samples(max_pixels) if max_samples is None else max_samples)
    colour = count - sum(1 for kind in extra if int(kind) in ALPHA_EXTRA_SAMPLES)
    if bands is None and colour > 3:
        bands = multiband_bands
    if bands is None and colour not in (1, 3):
        raise ImageLoadError(path, f"{count}-band TIFF; pass bands=(r, g, b) to choose which bands are red, green, blue")
    if bands is not None and not all(isinstance(b, (int, np.integer)) and 0 <= b < count for b in bands):
        raise ImageLoadError(path, f"bands {tuple(bands)} out of range for an image with {count} bands")
    return width, height
