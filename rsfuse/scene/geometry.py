"""From tile pixels to map coordinates: the affine transform and the CRS, nothing guessed.

* A tile's footprint is its window's four corners through the affine transform (so rotated and north-down rasters
  give the right quadrilateral).
* A grounding box is on the 0–1000 scale of the square the processor made of the tile (LLaVA's pad-to-square,
  centred): it goes to tile pixels (undoing the padding), then to native raster pixels (the tile window), then
  through the affine transform — again as four corners, so a box on a rotated raster is a rotated quadrilateral.
* Map coordinates go to EPSG:4326 (longitude, latitude; RFC 7946) with pyproj, and every ring is oriented
  counter-clockwise as RFC 7946 asks.
"""

from collections.abc import Sequence

from rsfuse.scene.tiling import Tile

__all__ = ["BOX_SCALE", "MapProjector", "box_to_pixels", "pixel_ring", "tile_ring"]

BOX_SCALE = 1000.0
Ring = list[tuple[float, float]]


def pixel_ring(x0: float, y0: float, x1: float, y1: float) -> Ring:
    """The closed ring of a pixel rectangle (column, row), corners in raster order."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def tile_ring(tile: Tile) -> Ring:
    """The tile's window as a closed ring of native pixel corners."""
    return pixel_ring(tile.x, tile.y, tile.x + tile.width, tile.y + tile.height)


def box_to_pixels(box: Sequence[float], tile: Tile) -> tuple[float, float, float, float]:
    """A ``[x1, y1, x2, y2]`` box on the 0–1000 scale of the processor's padded square view of ``tile`` →
    native raster pixels ``(x1, y1, x2, y2)``, clamped to the tile's window."""
    side = max(tile.width, tile.height)
    pad_x, pad_y = (side - tile.width) // 2, (side - tile.height) // 2  # the processor centres the tile (pad_to_square)
    x1, y1, x2, y2 = (float(value) for value in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))

    def to_x(value: float) -> float:
        return min(max(value / BOX_SCALE * side - pad_x, 0.0), tile.width) + tile.x

    def to_y(value: float) -> float:
        return min(max(value / BOX_SCALE * side - pad_y, 0.0), tile.height) + tile.y

    return to_x(x1), to_y(y1), to_x(x2), to_y(y2)


class MapProjector:
    """Pixel rings → the raster's CRS (affine) → EPSG:4326 (pyproj); without a CRS, pixel coordinates."""

    def __init__(self, transform: Sequence[float], crs_wkt: str | None) -> None:
        self.a, self.b, self.c, self.d, self.e, self.f = (float(value) for value in transform[:6])
        self.crs_wkt = crs_wkt
        self._to_wgs84 = None
        if crs_wkt is not None:
            import pyproj

            self._to_wgs84 = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None

    def to_map(self, ring: Ring) -> Ring:
        """Pixel (column, row) points → the raster's CRS (identity without georeferencing)."""
        if not self.georeferenced:
            return [(float(x), float(y)) for x, y in ring]
        return [(self.a * x + self.b * y + self.c, self.d * x + self.e * y + self.f) for x, y in ring]

    def to_wgs84(self, ring: Ring) -> Ring:
        """Points of the raster's CRS → (longitude, latitude)."""
        if self._to_wgs84 is None:
            raise ValueError("a raster without a CRS has no EPSG:4326 coordinates")
        xs, ys = self._to_wgs84.transform([x for x, _ in ring], [y for _, y in ring], errcheck=True)
        return list(zip(map(float, xs), map(float, ys)))

    def crs_name(self) -> str:
        """A file-name-safe name of the raster's CRS: ``EPSG_32633``, else ``crs`` (``pixel`` without one)."""
        if not self.georeferenced:
            return "pixel"
        import pyproj

        code = pyproj.CRS.from_wkt(self.crs_wkt).to_epsg()
        return f"EPSG_{code}" if code else "crs"
