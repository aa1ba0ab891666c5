"""Scene coordinates are exact: a box at a known tile position lands on known map coordinates (several CRSs and
affine transforms, rotated and north-down included); tiling covers every pixel with the asked overlap."""

import math

import numpy as np
import pytest

pytest.importorskip("rasterio")
pyproj = pytest.importorskip("pyproj")

from rsfuse.scene.geometry import MapProjector, box_to_pixels, tile_ring  # noqa: E402
from rsfuse.scene.reading import SceneError, SceneInfo  # noqa: E402
from rsfuse.scene.tiling import Tile, axis_starts, plan_tiles  # noqa: E402

TILE = Tile(index=7, row=2, col=1, x=256, y=512, width=256, height=256)
BOX = (250.0, 500.0, 750.0, 1000.0)  # → native pixels x 320..448, y 640..768


def _info(width, height, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), crs=None) -> SceneInfo:
    return SceneInfo(path="scene.tif", driver="GTiff", width=width, height=height, band_count=3, bands=(0, 1, 2),
                     dtype="uint8", nodata=None, stretch=None, crs_wkt=crs, transform=transform, has_overviews=False)


def test_box_goes_to_native_pixels_through_the_tile_window():
    assert box_to_pixels(BOX, TILE) == (320.0, 640.0, 448.0, 768.0)
    # a tile narrower than tall is padded square and centred by the processor: 0-1000 spans its height
    narrow = Tile(index=0, row=0, col=0, x=10, y=20, width=100, height=200)
    assert box_to_pixels((250, 0, 750, 1000), narrow) == (10.0, 20.0, 110.0, 220.0)
    assert box_to_pixels((0, 0, 1000, 500), narrow) == (10.0, 20.0, 110.0, 120.0)  # padding clamped away
    wide = Tile(index=0, row=0, col=0, x=0, y=300, width=200, height=100)
    assert box_to_pixels((0, 250, 1000, 750), wide) == (0.0, 300.0, 200.0, 400.0)


# (crs, transform, expected map corners of the box's pixel ring (320,640),(448,640),(448,768),(320,768))
CASES = {
    "utm north-up": ("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 5_000_000.0),
                     [(503200.0, 4_993_600.0), (504480.0, 4_993_600.0), (504480.0, 4_992_320.0),
                      (503200.0, 4_992_320.0)]),
    "utm north-down": ("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, 10.0, 0.0),
                       [(503200.0, 6400.0), (504480.0, 6400.0), (504480.0, 7680.0), (503200.0, 7680.0)]),
    "web mercator, 0.5 m": ("EPSG:3857", (0.5, 0.0, 1_000_000.0, 0.0, -0.5, 6_000_000.0),
                            [(1_000_160.0, 5_999_680.0), (1_000_224.0, 5_999_680.0), (1_000_224.0, 5_999_616.0),
                             (1_000_160.0, 5_999_616.0)]),
    "swiss LV95 rotated 90°": ("EPSG:2056", (0.0, 2.0, 2_600_000.0, 2.0, 0.0, 1_200_000.0),
                               [(2_601_280.0, 1_200_640.0), (2_601_280.0, 1_200_896.0), (2_601_536.0, 1_200_896.0),
                                (2_601_536.0, 1_200_640.0)]),
    "geographic degrees": ("EPSG:4326", (0.001, 0.0, 10.0, 0.0, -0.001, 50.0),
                           [(10.32, 49.36), (10.448, 49.36), (10.448, 49.232), (10.32, 49.232)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_box_maps_to_known_map_coordinates(case):
    crs, transform, expected = CASES[case]
    projector = MapProjector(transform, pyproj.CRS.from_user_input(crs).to_wkt())
    x1, y1, x2, y2 = box_to_pixels(BOX, TILE)
    ring = projector.to_map([(x1, y1), (x2, y1), (x2, y2), (x1, y2)])
    def flat(points):  # pytest >= 9.2 refuses nested approx
        return [value for point in points for value in point]

    assert len(ring) == len(expected) and flat(ring) == pytest.approx(flat(expected), abs=1e-6)


def test_rotated_transform_keeps_the_box_a_rotated_square():
    angle = math.radians(30)
    transform = (2 * math.cos(angle), -2 * math.sin(angle), 300000.0, 2 * math.sin(angle), 2 * math.cos(angle), 0.0)
    projector = MapProjector(transform, pyproj.CRS.from_epsg(32633).to_wkt())
    ring = projector.to_map([(0, 0), (100, 0), (100, 100), (0, 100)])
    assert ring[0] == pytest.approx((300000.0, 0.0))
    assert ring[1] == pytest.approx((300000.0 + 200 * math.cos(angle), 200 * math.sin(angle)))
    sides = [math.dist(ring[i], ring[i + 1]) for i in range(3)]
    assert sides == pytest.approx([200.0, 200.0, 200.0])


def test_wgs84_of_a_known_utm_point():
    # UTM zone 33N: easting 500 000 on the equator is longitude 15°, latitude 0 (the zone's central meridian)
    projector = MapProjector((10.0, 0.0, 500000.0, 0.0, -10.0, 0.0), pyproj.CRS.from_epsg(32633).to_wkt())
    (lon, lat), = projector.to_wgs84(projector.to_map([(0, 0)]))
    assert (lon, lat) == pytest.approx((15.0, 0.0), abs=1e-9)
    south = MapProjector((10.0, 0.0, 500000.0, 0.0, -10.0, 10_000_000.0), pyproj.CRS.from_epsg(32733).to_wkt())
    assert south.to_wgs84(south.to_map([(0, 0)]))[0] == pytest.approx((15.0, 0.0), abs=1e-9)


def test_pixel_coordinates_without_georeferencing():
    projector = MapProjector((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None)
    assert projector.to_map(tile_ring(TILE))[2] == (512.0, 768.0)
    assert projector.crs_name() == "pixel"
    with pytest.raises(ValueError):
        projector.to_wgs84([(0.0, 0.0)])


@pytest.mark.parametrize("length,side,overlap", [(1000, 128, 0.0), (1000, 128, 0.25), (777, 100, 0.5),
                                                 (2000, 500, 0.1), (90, 128, 0.25), (256, 128, 0.0)])
def test_tiles_cover_every_pixel_with_the_asked_overlap(length, side, overlap):
    info = _info(length, length + 13)
    plan = plan_tiles(info, tile_size=side, overlap=overlap)
    covered = np.zeros((info.height, info.width), dtype=bool)
    for tile in plan.tiles:
        assert (tile.width, tile.height) == (min(side, info.width), min(side, info.height))  # full-size
        assert tile.x + tile.width <= info.width and tile.y + tile.height <= info.height
        covered[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width] = True
    assert covered.all()
    starts = axis_starts(length, side, plan.stride)
    if length > side:
        asked = round(overlap * side)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(gap == side - asked for gap in gaps[:-1])  # interior neighbours overlap exactly as asked
        assert side - gaps[-1] >= asked  # the shifted edge tile overlaps at least as much
        assert starts[-1] + side == length
    assert [tile.index for tile in plan.tiles] == list(range(len(plan.tiles)))


def test_coarser_gsd_widens_the_native_window():
    info = _info(2000, 2000, (0.5, 0.0, 0.0, 0.0, -0.5, 0.0), pyproj.CRS.from_epsg(32633).to_wkt())
    plan = plan_tiles(info, tile_size=32, gsd=4.0, overlap=0.0)
    assert (plan.side, plan.rows, plan.cols) == (256, 8, 8)
    with pytest.raises(SceneError, match="finer than the raster's native 0.5"):
        plan_tiles(info, tile_size=32, gsd=0.25)


def _record(index, row, col, x, y, side, answer):
    return {"key": f"r{row:04d}c{col:04d}", "index": index, "row": row, "col": col, "x": x, "y": y, "width": side,
            "height": side, "status": "answered", "answer": answer, "error": None}


def test_boxes_seen_by_overlapping_tiles_are_one_object():
    from rsfuse.scene.aggregate import aggregate

    # two 100-px tiles overlapping by 50 px; one object at pixels 60..80 seen by both, one only by the second
    left = _record(0, 0, 0, 0, 0, 100, "[[600, 100, 800, 300]]")  # 60..80 x 10..30; 20 px from its tile's edge
    right = _record(1, 0, 1, 50, 0, 100, "[[100, 100, 300, 300], [700, 700, 900, 900]]")  # 60..80 (10 px from edge)
    summary, boxes = aggregate([left, right], "grounding", overlap=0.5)
    assert summary["boxes_before_dedupe"] == 3 and summary["boxes"] == 2
    assert [(box.tile, box.pixels) for box in boxes] == [("r0000c0000", (60.0, 10.0, 80.0, 30.0)),
                                                         ("r0000c0001", (120.0, 70.0, 140.0, 90.0))]
    counted, _ = aggregate([left, right], "count", overlap=0.5)
    assert (counted["count"], counted["count_source"]) == (2, "deduplicated boxes")
    # without overlap counts are the tiles' numbers, summed; errors and nodata tiles are counted apart
    three = _record(0, 0, 0, 0, 0, 100, "There are three ships.")
    two = _record(1, 0, 1, 100, 0, 100, "2")
    broken = {**_record(2, 0, 2, 200, 0, 100, None), "status": "error", "error": "bad block"}
    summed, _ = aggregate([three, two, broken], "count", overlap=0.0)
    assert (summed["count"], summed["errors"], summed["answered"]) == (5, 1, 2)
    said, _ = aggregate([_record(0, 0, 0, 0, 0, 9, "No."), _record(1, 0, 1, 9, 0, 9, "Yes, one.")], "existence",
                        overlap=0.25)
    assert (said["yes"], said["no"], said["answer"]) == (1, 1, "yes")
