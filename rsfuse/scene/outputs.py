"""The files of an answered scene, written into ``OUT``:

* ``scene.geojson`` — RFC 7946: EPSG:4326 (longitude, latitude), counter-clockwise rings, no ``crs`` member. One
  feature per tile (its footprint; properties: ``feature`` "tile", key, grid cell, window, status, answer, error,
  parsed value) and one per box (``feature`` "box", its tile, its 0–1000 tile box, its native pixel box).
* ``scene.<CRS>.geojson`` (e.g. ``scene.EPSG_32633.geojson``) — the same features in the raster's own CRS, with the
  legacy ``crs`` member naming it (GDAL and QGIS read it); ``scene.pixel.geojson`` instead, in (column, row) pixel
  coordinates, for a raster without georeferencing (which has no EPSG:4326 file).
* ``tiles.json`` / ``tiles.csv`` — one row per tile (the records of `SceneResult`).
* ``summary.json`` — the scene's answer (`rsfuse.scene.aggregate`), the raster and the tiling.
* ``overview.png`` — the scene at most `OVERVIEW_SIDE` pixels a side, each answered tile tinted by its answer
  (existence: yes green / no red / undecided yellow; count: more orange for larger counts; errors grey), and the
  boxes drawn in cyan.

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from rsfuse.scene.geometry import MapProjector, pixel_ring, tile_ring
from rsfuse.data.images import CLIP_MEAN_RGB
from rsfuse.scene.reading import SceneError, SceneRaster

__all__ = ["OVERVIEW_SIDE", "scene_features", "write_outputs"]

OVERVIEW_SIDE = 1024
CSV_FIELDS = ("key", "index", "row", "col", "x", "y", "width", "height", "status", "answer", "error", "present",
              "count", "boxes")
_TINT = {True: (40, 200, 60), False: (220, 50, 40), None: (230, 200, 40)}


def _write(path: Path, text: str | bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    os.replace(temporary, path)


def _polygon(ring, projector: MapProjector, wgs84: bool) -> dict:
    from shapely.geometry import Polygon, mapping
    from shapely.geometry.polygon import orient

    points = projector.to_map(ring)
    if wgs84:
        points = projector.to_wgs84(points)
    geometry = mapping(orient(Polygon(points), sign=1.0))
    return {"type": "Polygon", "coordinates": [[list(point) for point in geometry["coordinates"][0]]]}


def scene_features(result, projector: MapProjector, *, wgs84: bool) -> list[dict[str, Any]]:
    """The tile and box features of ``result`` in EPSG:4326 (``wgs84``) or the raster's CRS."""
    features = []
    for record in result.records:
        properties = {"feature": "tile", **{k: record.get(k) for k in CSV_FIELDS[:11]}, "parsed": record.get("parsed")}
        ring = tile_ring(_tile(record))
        features.append({"type": "Feature", "geometry": _polygon(ring, projector, wgs84), "properties": properties})
    for box in result.boxes:
        properties = {"feature": "box", "tile": box.tile, "box_1000": list(box.box), "pixels": list(box.pixels)}
        features.append({"type": "Feature", "geometry": _polygon(pixel_ring(*box.pixels), projector, wgs84),
                         "properties": properties})
    return features


def _tile(record):
    from rsfuse.scene.aggregate import tile_of  # noqa: PLC0415

    return tile_of(record)


def _collection(features, crs_member: dict | None = None) -> str:
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if crs_member is not None:
        collection["crs"] = crs_member
    collection["features"] = features
    return json.dumps(collection, ensure_ascii=False) + "\n"


def _csv(records) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        parsed = record.get("parsed") or {}
        row = {key: record.get(key) for key in CSV_FIELDS[:11]}
        row.update(present=parsed.get("present"), count=parsed.get("count"),
                   boxes=json.dumps(parsed.get("boxes")) if parsed.get("boxes") else "")
        writer.writerow(row)
    return buffer.getvalue()


def _overview(result, raster: SceneRaster) -> bytes:
    info = result.info
    scale = min(1.0, OVERVIEW_SIDE / max(info.width, info.height))
    width, height = max(1, round(info.width * scale)), max(1, round(info.height * scale))
    try:
        base = Image.fromarray(raster.read(0, 0, info.width, info.height, width, height, limit=False)[0], "RGB")
    except SceneError:  # a corrupt block: the tiles still show, on the nodata colour
        base = Image.new("RGB", (width, height), CLIP_MEAN_RGB)
    base = base.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    counts = [(r.get("parsed") or {}).get("count") or 0 for r in result.records]
    most = max(counts, default=0) or 1
    for record in result.records:
        box = [record["x"] * scale, record["y"] * scale, (record["x"] + record["width"]) * scale,
               (record["y"] + record["height"]) * scale]
        parsed = record.get("parsed") or {}
        if record["status"] == "error":
            colour = (128, 128, 128)
        elif record["status"] != "answered":
            continue
        elif result.kind == "existence":
            colour = _TINT[parsed.get("present")]
        elif result.kind == "count":
            colour = (255, round(200 * (1 - (parsed.get("count") or 0) / most)), 0)
        else:
            colour = (90, 120, 255)
        draw.rectangle(box, fill=(*colour, 60), outline=(*colour, 160))
    for item in result.boxes:
        x1, y1, x2, y2 = (value * scale for value in item.pixels)
        draw.rectangle([x1, y1, max(x1 + 1, x2), max(y1 + 1, y2)], outline=(0, 255, 255, 255), width=2)
    buffer = io.BytesIO()
    Image.alpha_composite(base, overlay).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(result, raster: SceneRaster, out_dir: Path) -> dict[str, Path]:
    """Write the files of the module docstring; returns name → path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    projector = MapProjector(result.info.transform, result.info.crs_wkt)
    files: dict[str, Path] = {}
    if projector.georeferenced:
        files["geojson"] = out_dir / "scene.geojson"
        _write(files["geojson"], _collection(scene_features(result, projector, wgs84=True)))
    name = projector.crs_name()
    files["geojson_native"] = out_dir / f"scene.{name}.geojson"
    crs_member = None
    if name.startswith("EPSG_"):
        crs_member = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{name[5:]}"}}
    _write(files["geojson_native"], _collection(scene_features(result, projector, wgs84=False), crs_member))
    files["tiles_json"] = out_dir / "tiles.json"
    _write(files["tiles_json"], json.dumps(result.records, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    files["tiles_csv"] = out_dir / "tiles.csv"
    _write(files["tiles_csv"], _csv(result.records))
    info = result.info
    summary = {**result.summary, "raster": {"path": info.path, "width": info.width, "height": info.height,
                                            "bands": list(info.bands), "crs": name, "transform": list(info.transform),
                                            "native_gsd": info.native_gsd},
               "tiling": result.plan.identity()}
    files["summary"] = out_dir / "summary.json"
    _write(files["summary"], json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
    files["overview"] = out_dir / "overview.png"
    _write(files["overview"], _overview(result, raster))
    return files
