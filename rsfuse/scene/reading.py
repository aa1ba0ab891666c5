"""Reading a whole scene with rasterio, one window at a time (never the whole raster in memory).

* **Formats.** The file's magic bytes pick one GDAL driver from `SCENE_DRIVERS` (GeoTIFF and COG through ``GTiff``,
  JPEG 2000 as Sentinel-2 ships it, PNG, JPEG) and the file is opened with that driver alone: GDAL's other drivers
  never see an untrusted file.
* **Bands.** Three bands, 0-based: ``bands`` when given, else the bands whose colour interpretation is red, green
  and blue, else the single band of a grey raster; otherwise `SceneError` names every band and its interpretation.
* **Values.** 8-bit data are used as they are. Deeper data (16-bit, float) get one 2–98 % stretch per band for the
  whole scene, so tiles have no seams: the percentiles of the valid pixels of an overview (a decimated read GDAL
  serves from the file's overviews) when the file has overviews, else of a grid of `STRETCH_SAMPLE_WINDOWS` sampled
  windows. Nodata (the dataset mask: nodata value, alpha or internal mask) is filled with the CLIP mean colour.
* **Resolution.** A window is read straight to the tile's output size (``out_shape``), averaging when it is coarser
  than native; GDAL takes the pixels from the overview level that fits when the file has overviews.
* **Limits.** The scene's width × height against ``max_scene_pixels``; each read against ``max_window_pixels``
  (the native pixels of a window when the file has no overviews, the output pixels otherwise) — not
  ``load_image``'s whole-image cap.
* **Georeferencing.** The affine transform and the CRS (WKT, read by pyproj, which must be able to carry it to
  EPSG:4326) are the only source of map coordinates. A raster without either (a plain PNG/JPEG/TIFF) is answered in
  pixel coordinates; a transform without a CRS, or a CRS pyproj cannot use, is refused.
"""

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rsfuse.data.images import CLIP_MEAN_RGB

__all__ = [
    "DEFAULT_MAX_SCENE_PIXELS",
    "DEFAULT_MAX_WINDOW_PIXELS",
    "SCENE_DRIVERS",
    "SceneError",
    "SceneInfo",
    "SceneRaster",
    "file_sha256",
]

SCENE_DRIVERS: dict[str, tuple[bytes, ...]] = {
    "GTiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "JP2OpenJPEG": (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"),
}
"""The GDAL drivers a scene may be read with, and the magic bytes that select each."""
DEFAULT_MAX_SCENE_PIXELS = 2_500_000_000  # 50 000 x 50 000
DEFAULT_MAX_WINDOW_PIXELS = 16384 * 16384
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIDE = 1024  # the overview read for the stretch fits in this many pixels a side
STRETCH_SAMPLE_WINDOWS = 8  # without overviews: an 8 x 8 grid of sampled windows ...
STRETCH_WINDOW_SIDE = 128  # ... of 128 x 128 pixels
GDAL_CACHE_BYTES = 64 << 20  # GDAL block cache while a scene is open, in bytes (rasterio passes an int as bytes)


class SceneError(ValueError):
    """A scene that cannot be answered as asked; the message is one line naming the file."""


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is: size, chosen bands (0-based), data type, nodata, per-band stretch (None for 8-bit data),
    georeferencing (``crs_wkt`` None = pixel coordinates; ``transform`` = affine ``(a, b, c, d, e, f)``:
    ``x = a·col + b·row + c``, ``y = d·col + e·row + f``) and the native ground sample distance along x and y."""

    path: str
    driver: str
    width: int
    height: int
    band_count: int
    bands: tuple[int, int, int]
    dtype: str
    nodata: float | None
    stretch: tuple[tuple[float, float], ...] | None
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    has_overviews: bool

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None

    @property
    def native_gsd(self) -> float:
        """Pixel size along the raster's columns, in the CRS's units (1.0 in pixel coordinates)."""
        a, b, _, d, e, _ = self.transform
        return math.hypot(a, d)


def file_sha256(path: str | os.PathLike) -> str:
    """The file's content digest (what a resumed scene must match), read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _driver_for(path: Path) -> str:
    if not path.is_file():
        raise SceneError(f"{path}: file not found")
    with path.open("rb") as handle:
        head = handle.read(16)
    for driver, magics in SCENE_DRIVERS.items():
        if head.startswith(magics):
            return driver
    raise SceneError(f"{path}: not a GeoTIFF/COG, JPEG 2000, PNG or JPEG file (the raster formats a scene may be)")


def _choose_bands(path: Path, dataset, bands) -> tuple[int, int, int]:
    from rasterio.enums import ColorInterp

    interp = list(dataset.colorinterp)
    described = ", ".join(f"{index}: {item.name}" + (f" ({name})" if name else "")
                          for index, (item, name) in enumerate(zip(interp, dataset.descriptions)))
    if bands is not None:
        bands = tuple(int(band) for band in bands)
        if len(bands) != 3 or min(bands) < 0 or max(bands) >= dataset.count:
            raise SceneError(f"{path}: bands {list(bands)} are not three of its {dataset.count} band(s) "
                             f"(0-based: {described})")
        return bands  # type: ignore[return-value]
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interp for colour in wanted):
        return tuple(interp.index(colour) for colour in wanted)  # type: ignore[return-value]
    if dataset.count == 1 or (dataset.count == 2 and interp[1] == ColorInterp.alpha):
        return (0, 0, 0)
    raise SceneError(f"{path}: {dataset.count} bands and no red/green/blue colour interpretation "
                     f"(0-based: {described}); choose three with bands=(R, G, B) / --bands R,G,B")


def _georeferencing(path: Path, dataset) -> tuple[str | None, tuple[float, ...]]:
    transform = tuple(float(value) for value in tuple(dataset.transform)[:6])
    identity = transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    if dataset.crs is None:
        if not identity:
            raise SceneError(f"{path}: an affine transform but no coordinate reference system; map coordinates "
                             f"cannot be given (write the CRS into the file, e.g. gdal_edit.py -a_srs EPSG:...)")
        return None, transform
    import pyproj

    wkt = dataset.crs.to_wkt()
    try:
        crs = pyproj.CRS.from_wkt(wkt)
        pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    except pyproj.exceptions.CRSError as error:
        raise SceneError(f"{path}: pyproj cannot read its CRS ({str(error).splitlines()[0]})") from None
    except pyproj.exceptions.ProjError as error:
        raise SceneError(f"{path}: pyproj cannot carry its CRS {crs.name!r} to EPSG:4326 "
                         f"({str(error).splitlines()[0]})") from None
    a, b, _, d, e, _ = transform
    if a * e - b * d == 0:
        raise SceneError(f"{path}: its affine transform {transform} is singular")
    return wkt, transform


class SceneRaster:
    """An open scene: `info`, `read(x, y, width, height, out_width, out_height)` and `valid_any(...)`. Use as a context manager
    (or call `close`); GDAL's block cache is held to `GDAL_CACHE_BYTES` while it is open."""

    def __init__(self, path: str | os.PathLike, *, bands=None, max_scene_pixels: int = DEFAULT_MAX_SCENE_PIXELS,
                 max_window_pixels: int = DEFAULT_MAX_WINDOW_PIXELS) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.path = Path(path)
        driver = _driver_for(self.path)
        self.max_window_pixels = int(max_window_pixels)
        self._env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
        self._env.__enter__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.path, driver=driver)
        except RasterioIOError as error:
            self._env.__exit__(None, None, None)
            raise SceneError(f"{self.path}: cannot open ({str(error).splitlines()[0]})") from None
        try:
            self.info = self._describe(driver, bands, max_scene_pixels)
        except BaseException:
            self.close()
            raise
        self._fill = np.array(CLIP_MEAN_RGB, dtype=np.uint8)

    def _describe(self, driver: str, bands, max_scene_pixels: int) -> SceneInfo:
        dataset = self.dataset
        width, height = dataset.width, dataset.height
        if width * height > max_scene_pixels:
            raise SceneError(f"{self.path}: {width} x {height} = {width * height} pixels is over the scene limit "
                             f"of {max_scene_pixels} pixels (max_scene_pixels / --max-scene-pixels)")
        chosen = _choose_bands(self.path, dataset, bands)
        crs_wkt, transform = _georeferencing(self.path, dataset)
        dtype = dataset.dtypes[chosen[0]]
        info = SceneInfo(path=str(self.path), driver=driver, width=width, height=height, band_count=dataset.count,
                         bands=chosen, dtype=dtype, nodata=dataset.nodata, stretch=None, crs_wkt=crs_wkt,
                         transform=transform, has_overviews=bool(dataset.overviews(chosen[0] + 1)))
        if any(dataset.dtypes[band] != "uint8" for band in chosen):
            info = replace(info, stretch=self._stretch(info))
        return info

    # ----- the stretch ---------------------------------------------------------------------------------------
    def _sample(self, info: SceneInfo) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[3, N]`` and validity ``[N]`` of the stretch's sample (an overview, else sampled windows)."""
        from rasterio.windows import Window

        indexes = [band + 1 for band in info.bands]
        if info.has_overviews:
            factor = max(info.width, info.height) / STRETCH_SAMPLE_SIDE
            shape = (max(1, round(info.height / max(factor, 1))), max(1, round(info.width / max(factor, 1))))
            values = self.dataset.read(indexes, out_shape=(3, *shape))
            masks = self.dataset.read_masks(indexes, out_shape=(3, *shape))
            return values.reshape(3, -1), (masks > 0).all(axis=0).reshape(-1)
        side_x, side_y = min(STRETCH_WINDOW_SIDE, info.width), min(STRETCH_WINDOW_SIDE, info.height)
        values, valid = [], []
        for row in np.linspace(0, info.height - side_y, STRETCH_SAMPLE_WINDOWS).round().astype(int):
            for col in np.linspace(0, info.width - side_x, STRETCH_SAMPLE_WINDOWS).round().astype(int):
                window = Window(int(col), int(row), side_x, side_y)
                try:
                    block = self.dataset.read(indexes, window=window)
                    mask = self.dataset.read_masks(indexes, window=window)
                except Exception:  # noqa: BLE001 (a corrupt block: the tile that holds it reports it)
                    continue
                values.append(block.reshape(3, -1))
                valid.append((mask > 0).all(axis=0).reshape(-1))
        if not values:
            raise SceneError(f"{self.path}: no window of the stretch's sample could be read")
        return np.concatenate(values, axis=1), np.concatenate(valid)

    def _stretch(self, info: SceneInfo) -> tuple[tuple[float, float], ...]:
        values, valid = self._sample(info)
        limits = []
        for band in values:
            finite = band[valid & np.isfinite(band)].astype(np.float64)
            if finite.size == 0:
                limits.append((0.0, 1.0))
                continue
            low, high = (float(v) for v in np.percentile(finite, STRETCH_PERCENTILES))
            limits.append((low, high if high > low else low + 1.0))
        return tuple(limits)

    # ----- windows -------------------------------------------------------------------------------------------
    def _check_window(self, width: int, height: int, out_side: int) -> None:
        pixels = out_side * out_side if self.info.has_overviews else width * height
        if pixels > self.max_window_pixels:
            raise SceneError(f"{self.path}: a {width} x {height} window ({pixels} pixels read) is over the "
                             f"per-window limit of {self.max_window_pixels} pixels (add overviews, or ask a finer GSD)")

    def read(self, x: int, y: int, width: int, height: int, out_width: int, out_height: int, *,
             limit: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The window ``(x, y, width, height)`` (native pixels) as 8-bit RGB ``[out_height, out_width, 3]`` with
        nodata filled by the CLIP mean colour, and its validity mask ``[out_height, out_width]``. A window that
        cannot be decoded raises `SceneError` naming it. ``limit=False`` (the overview picture): no per-window
        limit, nearest-neighbour decimation."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        if limit:
            self._check_window(width, height, max(out_width, out_height))
        indexes = [band + 1 for band in self.info.bands]
        coarser = limit and (width > out_width or height > out_height)
        window = Window(x, y, width, height)
        try:
            values = self.dataset.read(indexes, window=window, out_shape=(3, out_height, out_width),
                                       resampling=Resampling.average if coarser else Resampling.nearest)
            masks = self.dataset.read_masks(indexes, window=window, out_shape=(3, out_height, out_width))
        except Exception as error:  # noqa: BLE001 (GDAL raises several types for a corrupt block)
            cause = error.__cause__ or error  # rasterio's "Read failed" wraps GDAL's own message
            text = " ".join(str(cause).split()) or type(cause).__name__
            raise SceneError(f"{self.path}: window x={x} y={y} {width}x{height} cannot be read ({text})") from None
        valid = (masks > 0).all(axis=0)
        rgb = self._to_uint8(values)
        rgb[~valid] = self._fill
        return rgb, valid

    def valid_any(self, x: int, y: int, width: int, height: int, out_width: int, out_height: int) -> bool:
        """Whether any pixel of the window, read at the output size, holds data (the mask only)."""
        from rasterio.windows import Window

        indexes = [band + 1 for band in self.info.bands]
        try:
            masks = self.dataset.read_masks(indexes, window=Window(x, y, width, height),
                                            out_shape=(3, out_height, out_width))
        except Exception:  # noqa: BLE001 (reported when the tile is read)
            return True
        return bool((masks > 0).all(axis=0).any())

    def _to_uint8(self, values: np.ndarray) -> np.ndarray:
        if self.info.stretch is None:
            return np.ascontiguousarray(np.moveaxis(values.astype(np.uint8, copy=False), 0, -1))
        out = np.empty((*values.shape[1:], 3), dtype=np.uint8)
        for channel, (low, high) in enumerate(self.info.stretch):
            band = np.nan_to_num(values[channel].astype(np.float32), nan=low, posinf=high, neginf=low)
            out[..., channel] = np.clip((band - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)
        return out

    # ----- lifetime ------------------------------------------------------------------------------------------
    def close(self) -> None:
        dataset = getattr(self, "dataset", None)
        if dataset is not None:
            dataset.close()
            self.dataset = None
            self._env.__exit__(None, None, None)

    def __enter__(self) -> "SceneRaster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
