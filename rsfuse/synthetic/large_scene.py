"""``rsfuse synth OUT --large-scene``: one large georeferenced scene to answer with ``rsfuse scene``.

It writes::

    OUT/scene.tif                   GeoTIFF: 4 bands (red, green, blue, near infrared; colour interpretation set),
                                    uint16 holding 12-bit values, nodata 0, 512 x 512 tiles, deflate, overviews
                                    2/4/8/16; a projected CRS (default EPSG:32633, UTM zone 33N) and a north-up
                                    affine transform (default origin 500 000 E, 5 000 000 N, 0.5 m pixels)
    OUT/objects.geojson             the ground truth, RFC 7946 (EPSG:4326): one polygon per object, with its id,
                                    kind, colour, size in metres and its pixel box [x0, y0, x1, y1) in the raster
    OUT/objects.EPSG_<code>.geojson the same polygons in the raster's CRS
    OUT/scene.json                  the settings, the transform, counts per kind

The scene is written window by window (one 512-pixel block row of 4 bands at a time, never the whole raster in
memory): fields of a few colours on a coarse grid, per-pixel texture, a nodata border of ``border`` pixels and a
diagonal nodata corner (as a satellite swath edge leaves), and small objects of the benchmark's kinds
(`rsfuse.synthetic.scene.OBJECT_KINDS`) at sizes in metres, placed at random map positions inside the valid area
(at most one per 64-pixel cell, so they do not overlap). Everything is a function of ``seed``.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np

from rsfuse.synthetic.scene import COLOUR_NAMES, OBJECT_KINDS

__all__ = ["OBJECT_METRES", "write_large_scene", "write_truth", "main"]

OBJECT_METRES: dict[str, tuple[float, float]] = {"vehicle": (4.5, 2.0), "ship": (30.0, 8.0), "plane": (36.0, 36.0),
                                                 "storage tank": (20.0, 20.0)}
COLOUR_RGB: dict[str, tuple[int, int, int]] = {"red": (200, 40, 40), "blue": (40, 60, 200),
                                               "white": (240, 240, 240), "yellow": (230, 210, 40),
                                               "green": (40, 170, 60)}
FIELD_RGB = np.array([(110, 100, 80), (90, 120, 70), (130, 125, 115), (70, 95, 60), (150, 140, 110)], dtype=np.float32)
FIELD_CELL = 256  # pixels per field-grid cell
OBJECT_CELL = 64  # at most one object per cell
BLOCK = 512
SCALE_12_BIT = 16  # 8-bit colours x 16 = 12-bit values in uint16


def _valid(xs: np.ndarray, ys: np.ndarray, size: int, border: int) -> np.ndarray:
    inside = (xs >= border) & (ys >= border) & (xs < size - border) & (ys < size - border)
    return inside & (xs + ys >= size // 4)  # the swath edge: a diagonal nodata corner at the top left


def _objects(rng: np.random.Generator, size: int, border: int, gsd: float, density: float) -> list[dict]:
    cells = size // OBJECT_CELL
    chosen = np.flatnonzero(rng.random(cells * cells) < density)
    objects = []
    for cell in chosen:
        kind = OBJECT_KINDS[rng.integers(len(OBJECT_KINDS))]
        colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        long, short = (max(1, math.ceil(metres / gsd)) for metres in OBJECT_METRES[kind])
        width, height = (long, short) if rng.random() < 0.5 else (short, long)
        x0 = int((cell % cells) * OBJECT_CELL + rng.integers(0, max(1, OBJECT_CELL - width)))
        y0 = int((cell // cells) * OBJECT_CELL + rng.integers(0, max(1, OBJECT_CELL - height)))
        corners_x = np.array([x0, x0 + width - 1])
        corners_y = np.array([y0, y0 + height - 1])
        if not _valid(*np.meshgrid(corners_x, corners_y), size, border).all():
            continue
        objects.append({"id": len(objects), "kind": kind, "colour": colour,
                        "pixels": [x0, y0, x0 + width, y0 + height]})
    return objects


def _block(seed: int, size: int, border: int, top: int, left: int, height: int, width: int,
           objects: list[dict]) -> np.ndarray:
    """Bands ``[4, height, width]`` (uint16) of the window at ``(left, top)``."""
    rng = np.random.default_rng([seed, 3, top, left])
    ys, xs = np.mgrid[top:top + height, left:left + width]
    cell = (ys // FIELD_CELL) * 7919 + (xs // FIELD_CELL) * 104729 + seed
    rgb = FIELD_RGB[cell % len(FIELD_RGB)] + rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    for item in objects:
        x0, y0, x1, y1 = item["pixels"]
        if x1 <= left or x0 >= left + width or y1 <= top or y0 >= top + height:
            continue
        rgb[max(y0, top) - top:min(y1, top + height) - top, max(x0, left) - left:min(x1, left + width) - left] = \
            COLOUR_RGB[item["colour"]]
    nir = rgb[..., 1] * 1.6 - rgb[..., 0] * 0.4
    bands = np.concatenate([rgb, nir[..., None]], axis=-1)
    values = np.clip(bands * SCALE_12_BIT, 1, 4095).astype(np.uint16)  # 0 is nodata
    values[~_valid(xs, ys, size, border)] = 0
    return np.ascontiguousarray(np.moveaxis(values, -1, 0))


def _features(objects: list[dict], transform, to_wgs84) -> list[dict]:
    from shapely.geometry import Polygon, mapping
    from shapely.geometry.polygon import orient

    features = []
    for item in objects:
        x0, y0, x1, y1 = item["pixels"]
        ring = [transform @ point for point in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
        if to_wgs84 is not None:
            ring = list(zip(*to_wgs84.transform([x for x, _ in ring], [y for _, y in ring])))
        geometry = mapping(orient(Polygon(ring), sign=1.0))
        metres = item.get("metres", OBJECT_METRES[item["kind"]])
        polygon = {"type": "Polygon", "coordinates": [[list(point) for point in geometry["coordinates"][0]]]}
        features.append({"type": "Feature", "properties": {**item, "metres": list(metres)}, "geometry": polygon})
    return features


def write_large_scene(out_dir, *, size: int = 8192, seed: int = 0, gsd: float = 0.5, epsg: int = 32633,
                      origin: tuple[float, float] = (500_000.0, 5_000_000.0), border: int = 64,
                      density: float = 0.05, overviews: bool = True) -> dict:
    """Write the large scene (see the module docstring) into ``out_dir``; returns ``scene.json``'s content."""
    import pyproj
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if size < 256 or gsd <= 0 or not 0 <= border < size // 4 or not 0 <= density <= 1:
        raise ValueError(f"large scene: size >= 256, gsd > 0, 0 <= border < size/4, density in [0, 1] "
                         f"(got size {size}, gsd {gsd}, border {border}, density {density})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = from_origin(origin[0], origin[1], gsd, gsd)
    crs = pyproj.CRS.from_epsg(epsg)
    objects = _objects(np.random.default_rng([seed, 4]), size, border, gsd, density)
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0, crs=crs.to_wkt(),
                   transform=transform, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                   interleave="pixel", BIGTIFF="IF_SAFER")
    path = out / "scene.tif"
    # GDAL_CACHEMAX in bytes: rasterio hands an int to GDALSetCacheMax64
    with rasterio.Env(GDAL_CACHEMAX=64 << 20), rasterio.open(path, "w", **profile) as dataset:
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
        dataset.descriptions = ("red", "green", "blue", "nir")
        for top in range(0, size, BLOCK):
            height = min(BLOCK, size - top)
            rows = [item for item in objects if item["pixels"][1] < top + height and item["pixels"][3] > top]
            for left in range(0, size, BLOCK):
                width = min(BLOCK, size - left)
                dataset.write(_block(seed, size, border, top, left, height, width, rows),
                              window=Window(left, top, width, height))
        if overviews:
            dataset.build_overviews([2, 4, 8, 16], Resampling.average)
    return write_truth(out, objects, transform, epsg, {"size": size, "seed": seed, "gsd": gsd, "epsg": epsg,
                                                     "origin": list(origin), "border": border, "density": density})


def write_truth(out: Path, objects: list[dict], transform, epsg: int, settings: dict, **extra) -> dict:
    """The ground truth of a written scene: ``objects.geojson`` (EPSG:4326), ``objects.EPSG_<epsg>.geojson`` (the
    raster's CRS) and ``scene.json`` (``settings``, the transform, the object counts per kind, then ``extra``);
    returns ``scene.json``'s content."""
    import pyproj

    to_wgs84 = pyproj.Transformer.from_crs(pyproj.CRS.from_epsg(epsg), "EPSG:4326", always_xy=True)
    for name, projector in (("objects.geojson", to_wgs84), (f"objects.EPSG_{epsg}.geojson", None)):
        collection: dict = {"type": "FeatureCollection"}
        if projector is None:
            collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        collection["features"] = _features(objects, transform, projector)
        (out / name).write_text(json.dumps(collection) + "\n")
    meta = {**settings, "transform": list(transform)[:6], "objects": len(objects),
            "counts": {kind: sum(item["kind"] == kind for item in objects) for kind in OBJECT_KINDS}, **extra}
    (out / "scene.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfuse synth --large-scene", description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--large-scene", action="store_true", required=True)
    parser.add_argument("--size", type=int, default=8192, help="pixels a side (default 8192)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gsd", type=float, default=0.5, help="metres per pixel (default 0.5)")
    parser.add_argument("--epsg", type=int, default=32633, help="projected CRS (default 32633, UTM 33N)")
    parser.add_argument("--border", type=int, default=64, help="nodata border in pixels (default 64)")
    parser.add_argument("--density", type=float, default=0.05, help="chance of an object per 64-px cell")
    parser.add_argument("--no-overviews", action="store_true")
    args = parser.parse_args(argv)
    try:
        meta = write_large_scene(args.out, size=args.size, seed=args.seed, gsd=args.gsd, epsg=args.epsg,
                                 border=args.border, density=args.density, overviews=not args.no_overviews)
    except (ValueError, OSError) as error:
        from rsfuse.recipes.errors import debug_requested, report_expected  # noqa: PLC0415  (CLI error path)

        return report_expected("rsfuse synth", error, debug=debug_requested(argv or []))
    print(f"wrote {args.out}/scene.tif ({meta['size']} x {meta['size']} px, EPSG:{meta['epsg']}, "
          f"{meta['objects']} objects: {meta['counts']})")
    return 0
