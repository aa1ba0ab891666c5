"""One answer for the scene from its tiles' answers, by the question's kind.

* **existence** — the tiles that say yes, no, or neither (a map, in the outputs); the scene says yes when any tile
  does.
* **count** — on tiles without overlap (the default for counts), the sum of the tiles' numbers. With overlap an
  object seen by two tiles would be counted twice, so the count is then the number of boxes the tiles gave, after
  de-duplication (below); tiles that answered a number without boxes are reported as ``unboxed_tiles``.
* **grounding** — every box in native raster pixels; boxes of different tiles that overlap by IoU ≥ ``dedupe_iou``
  are one object, kept from the tile where it lies farthest from the tile's edge (least cut off).
* **free-form** — the answers, listed per tile.

Tiles that could not be read are ``errors`` and are left out of the counts; all-nodata tiles are ``nodata``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rsfuse.scene.answers import parse_answer
from rsfuse.scene.geometry import box_to_pixels
from rsfuse.scene.tiling import Tile

__all__ = ["DEDUPE_IOU", "SceneBox", "aggregate", "tile_of"]

DEDUPE_IOU = 0.5


@dataclass(frozen=True)
class SceneBox:
    """A box in native raster pixels ``(x1, y1, x2, y2)``, the tile it came from and its 0–1000 tile box."""

    pixels: tuple[float, float, float, float]
    tile: str
    box: tuple[float, float, float, float]


def tile_of(record: dict[str, Any]) -> Tile:
    return Tile(index=record["index"], row=record["row"], col=record["col"], x=record["x"], y=record["y"],
                width=record["width"], height=record["height"])


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _margin(box: Sequence[float], tile: Tile) -> float:
    """How far the box lies from its tile's edge (pixels; larger = less likely cut off)."""
    return min(box[0] - tile.x, box[1] - tile.y, tile.x + tile.width - box[2], tile.y + tile.height - box[3])


def dedupe(boxes: list[tuple[SceneBox, Tile]], iou: float) -> list[SceneBox]:
    """Greedy: most central first; a box overlapping a kept box of another tile by IoU ≥ ``iou`` is dropped."""
    order = sorted(boxes, key=lambda item: (-_margin(item[0].pixels, item[1]), item[1].index, item[0].pixels))
    kept: list[SceneBox] = []
    for box, _ in order:
        if all(other.tile == box.tile or _iou(other.pixels, box.pixels) < iou for other in kept):
            kept.append(box)
    return sorted(kept, key=lambda item: (item.pixels[1], item.pixels[0], item.tile))


def aggregate(records: Sequence[dict[str, Any]], kind: str, *, overlap: float,
              dedupe_iou: float = DEDUPE_IOU) -> tuple[dict[str, Any], list[SceneBox]]:
    """``(summary, boxes)`` of the scene; each answered record gains ``parsed`` (present / count / boxes)."""
    answered = [record for record in records if record["status"] == "answered"]
    summary: dict[str, Any] = {
        "kind": kind,
        "tiles": len(records),
        "answered": len(answered),
        "nodata": sum(record["status"] == "nodata" for record in records),
        "errors": sum(record["status"] == "error" for record in records),
    }
    candidates: list[tuple[SceneBox, Tile]] = []
    for record in answered:
        parsed = parse_answer(record["answer"], kind)
        record["parsed"] = {"present": parsed.present, "count": parsed.count, "boxes": [list(b) for b in parsed.boxes]}
        tile = tile_of(record)
        candidates += [(SceneBox(pixels=box_to_pixels(box, tile), tile=record["key"], box=box), tile)
                       for box in parsed.boxes]
    boxes = dedupe(candidates, dedupe_iou) if overlap > 0 else [box for box, _ in candidates]
    if kind == "existence":
        values = [record["parsed"]["present"] for record in answered]
        summary.update(yes=values.count(True), no=values.count(False), undecided=values.count(None),
                       answer="yes" if True in values else "no" if False in values else "undecided")
    elif kind == "count":
        if overlap > 0:
            unboxed = [r for r in answered if not r["parsed"]["boxes"] and (r["parsed"]["count"] or 0) > 0]
            summary.update(count=len(boxes), count_source="deduplicated boxes", unboxed_tiles=len(unboxed))
        else:
            counts = [record["parsed"]["count"] for record in answered]
            summary.update(count=sum(value for value in counts if value is not None), count_source="sum of tiles",
                           unparsed=counts.count(None))
    elif kind == "grounding":
        summary.update(boxes=len(boxes), boxes_before_dedupe=len(candidates))
    return summary, boxes
