"""Cutting a scene into tiles: square windows of ``tile_size`` model pixels at the asked ground sample distance.

At GSD ``g`` on a raster of native GSD ``n`` (``g >= n``) a tile covers ``side = round(tile_size · g / n)`` native
pixels a side and is read (resampled) to ``tile_size`` pixels. Along each axis tiles start every
``stride = side − round(overlap · side)`` pixels; the last tile is shifted inward to end at the raster's edge, so
every tile is full-size and every pixel is covered (the shifted tile overlaps its neighbour by at least the asked
overlap). A raster smaller than one tile along an axis gets one tile that spans it (the processor pads it square).
Tiles are numbered row-major; `Tile.key` names a tile in the output files.
"""

import math
from dataclasses import dataclass

from rsfuse.scene.reading import SceneError, SceneInfo

__all__ = ["Tile", "TilePlan", "axis_starts", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """Tile ``index`` (row-major), grid cell ``(row, col)``, native window ``(x, y, width, height)``."""

    index: int
    row: int
    col: int
    x: int
    y: int
    width: int
    height: int

    @property
    def key(self) -> str:
        return f"r{self.row:04d}c{self.col:04d}"


@dataclass(frozen=True)
class TilePlan:
    """Every tile of a scene (before nodata tiles are skipped) and how they were cut."""

    tiles: tuple[Tile, ...]
    tile_size: int  # model pixels a side (what each tile is read to)
    side: int  # native pixels a side
    stride: int
    overlap: float
    gsd: float  # the asked ground sample distance, in the CRS's units (pixels without georeferencing)
    rows: int
    cols: int

    def identity(self) -> dict:
        """What the tiling is, for resumable outputs."""
        return {"tile_size": self.tile_size, "side": self.side, "stride": self.stride, "overlap": self.overlap,
                "gsd": self.gsd, "rows": self.rows, "cols": self.cols}


def axis_starts(length: int, side: int, stride: int) -> list[int]:
    """Tile starts along one axis of ``length`` pixels: every ``stride``, the last shifted to end at the edge."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side, stride))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def plan_tiles(info: SceneInfo, *, tile_size: int, gsd: float | None = None, overlap: float = 0.0) -> TilePlan:
    """The tiles of ``info``'s raster at ``gsd`` (None: native) with ``overlap`` (fraction of a tile, [0, 0.9])."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise SceneError(f"tile_size must be a positive int, got {tile_size!r}")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap <= 0.9):
        raise SceneError(f"overlap must be a fraction of a tile in [0, 0.9], got {overlap!r}")
    native = info.native_gsd
    units = "map units" if info.georeferenced else "pixels"
    if gsd is None:
        gsd = native
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and gsd > 0):
        raise SceneError(f"gsd must be a positive number ({units} per pixel), got {gsd!r}")
    if gsd < native * (1 - 1e-9):
        raise SceneError(f"{info.path}: GSD {gsd:g} is finer than the raster's native {native:g} {units} per pixel "
                         f"(ask {native:g} or coarser)")
    side = max(1, round(tile_size * gsd / native))
    stride = max(1, side - round(overlap * side))
    xs = axis_starts(info.width, side, stride)
    ys = axis_starts(info.height, side, stride)
    width, height = min(side, info.width), min(side, info.height)
    tiles = tuple(Tile(index=r * len(xs) + c, row=r, col=c, x=x, y=y, width=width, height=height)
                  for r, y in enumerate(ys) for c, x in enumerate(xs))
    return TilePlan(tiles=tiles, tile_size=tile_size, side=side, stride=stride, overlap=float(overlap),
                    gsd=float(gsd), rows=len(ys), cols=len(xs))
