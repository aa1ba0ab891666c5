"""Small rasters for the scene tests, written with rasterio: ``write_raster`` (any bands, CRS, transform, nodata,
tiling) and ``corrupt_block`` (garbles one compressed block in the middle of a tiled GeoTIFF)."""

from pathlib import Path

import numpy as np


def write_raster(path: Path, data: np.ndarray, *, crs="EPSG:32633", transform=None, nodata=None, colorinterp=None,
                 block: int | None = 128, compress: str | None = "deflate") -> Path:
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype), nodata=nodata,
                   transform=transform if transform is not None else from_origin(500000, 5000000, 0.5, 0.5))
    if crs is not None:
        profile["crs"] = crs
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        if colorinterp is not None:
            dataset.colorinterp = colorinterp
    return path


def corrupt_block(path: Path, index: int) -> None:
    """Overwrite the middle of compressed block ``index`` (row-major) with garbage."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, length = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as handle:
        handle.seek(offset + 2)
        handle.write(b"\xff\x00\x13\x37" * max(1, (length - 4) // 4))
