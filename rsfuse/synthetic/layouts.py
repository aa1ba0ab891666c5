"""Random scene layouts of the synthetic benchmark: one function per scene class (`LAYOUTS`); small objects are
placed in their hosts by `rsfuse.synthetic.placement`.

Each layout paints large, class-specific structures (learnable from a coarse global view) and names the host regions
where small objects may stand: vehicles on roads/parking/aprons, ships on water, planes on aprons, storage tanks on
pads.
"""

from typing import Callable

import numpy as np

from rsfuse.synthetic.scene import (
    REFERENCE_SIZE,
    Box,
    Structure,
    structure_mask,
)

__all__ = ["LAYOUTS", "Host", "LayoutBuilder"]

ASPHALT = (86, 86, 90)
DIRT = (150, 122, 88)
CONCRETE = (164, 162, 156)
WATER = (34, 66, 84)
PAD = (118, 116, 110)
ROOFS = ((172, 82, 60), (112, 112, 120), (124, 92, 70), (134, 54, 46), (150, 140, 128))
FLAT_ROOFS = ((178, 180, 184), (110, 128, 150), (196, 192, 180), (140, 146, 140))
CROPS = ((96, 140, 56), (150, 160, 70), (190, 168, 92), (120, 100, 64), (70, 120, 60), (170, 150, 60))
TREE = (36, 78, 36)
GRASS_CLEARING = (100, 130, 64)

Host = tuple[np.ndarray, tuple[str, ...]]  # (bool mask, orientations to draw from)


class LayoutBuilder:
    """Collects structures of one scene; lengths are given at REFERENCE_SIZE and scaled by ``px``."""

    def __init__(self, rng: np.random.Generator, size: int, *, object_scale: float = 1.0) -> None:
        self.rng = rng
        self.size = size
        self.scale = size / REFERENCE_SIZE
        self.object_scale = object_scale
        self.structures: list[Structure] = []

    def px(self, length: float) -> int:
        return max(1, int(round(length * self.scale)))

    def uniform_px(self, low: float, high: float) -> int:
        return self.px(self.rng.uniform(low, high))

    def fraction(self, low: float, high: float) -> int:
        return int(self.rng.uniform(low, high) * self.size)

    def tint(self, rgb: tuple[int, int, int], spread: float = 0.06) -> list[int]:
        factor = 1.0 + self.rng.uniform(-spread, spread)
        return [min(255, max(0, int(round(c * factor)))) for c in rgb]

    def pick(self, options: tuple):
        return options[int(self.rng.integers(len(options)))]

    def add(self, kind: str, shape: str, bbox: Box, **params) -> Structure:
        x0, y0, x1, y1 = (int(v) for v in bbox)
        structure = Structure(kind=kind, shape=shape, bbox=(x0, y0, x1, y1), params=params)
        self.structures.append(structure)
        return structure

    def mask(self, *structures: Structure, grow: int = 0) -> np.ndarray:
        """Union mask of ``structures``; ``grow`` widens rect structures by that many pixels on every side."""
        union = np.zeros((self.size, self.size), dtype=bool)
        for structure in structures:
            if grow and structure.shape == "rect":
                x0, y0, x1, y1 = structure.bbox
                union[max(0, y0 - grow) : max(0, y1 + grow), max(0, x0 - grow) : max(0, x1 + grow)] = True
            else:
                union |= structure_mask(structure, self.size)
        return union

    def straight_road(self, axis: str, position: int, width: int, *, kind: str = "road") -> Structure:
        """A road across the whole image, ``axis`` = direction of travel, ``position`` = its centre line."""
        start = position - width // 2
        bbox = (0, start, self.size, start + width) if axis == "horizontal" else (start, 0, start + width, self.size)
        colour = self.tint(DIRT if kind == "dirt road" else ASPHALT)
        return self.add(kind, "rect", bbox, colour=colour, axis=axis)

    def spaced_positions(self, count: int, low: float, high: float, min_gap: float) -> list[int]:
        """``count`` sorted positions in ``[low, high) * size`` at least ``min_gap * size`` apart."""
        for _ in range(100):
            values = np.sort(self.rng.uniform(low, high, size=count))
            if count < 2 or np.diff(values).min() >= min_gap:
                return [int(v * self.size) for v in values]
        return [int(v * self.size) for v in np.linspace(low, high, count)]

    def fits(self, free: np.ndarray, bbox: Box) -> bool:
        x0, y0, x1, y1 = bbox
        if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
            return False
        return bool(free[y0:y1, x0:x1].all())

    def random_rect(self, free: np.ndarray, width: int, height: int, tries: int = 60) -> Box | None:
        """A ``width`` x ``height`` box lying in ``free`` (None if ``tries`` random draws all fail)."""
        for _ in range(tries):
            x0 = int(self.rng.integers(0, max(1, self.size - width)))
            y0 = int(self.rng.integers(0, max(1, self.size - height)))
            bbox = (x0, y0, x0 + width, y0 + height)
            if self.fits(free, bbox):
                return bbox
        return None

    def buildings(self, free: np.ndarray, *, kind: str, cell: int, low: float, high: float, keep: float) -> None:
        """Tile the image into ``cell`` px cells and put one building of ``low..high`` px sides into free cells."""
        shadow = self.px(2)
        for top in range(0, self.size - cell + 1, cell):
            for left in range(0, self.size - cell + 1, cell):
                if self.rng.random() > keep:
                    continue
                width, height = self.uniform_px(low, high), self.uniform_px(low, high)
                x0 = left + int(self.rng.integers(0, max(1, cell - width - shadow)))
                y0 = top + int(self.rng.integers(0, max(1, cell - height - shadow)))
                bbox = (x0, y0, x0 + width, y0 + height)
                if not self.fits(free, (x0, y0, x0 + width + shadow, y0 + height + shadow)):
                    continue
                if kind == "house":
                    ridge = "horizontal" if width >= height else "vertical"
                    self.add(kind, "rect", bbox, colour=self.tint(self.pick(ROOFS)), ridge=ridge, shadow=shadow)
                else:
                    self.add(kind, "rect", bbox, colour=self.tint(self.pick(FLAT_ROOFS)), ridge="none", shadow=shadow)

    def trees(self, free: np.ndarray, count: int, low: float, high: float) -> None:
        for _ in range(count):
            radius = self.uniform_px(low, high)
            cx, cy = int(self.rng.integers(0, self.size)), int(self.rng.integers(0, self.size))
            bbox = (cx - radius, cy - radius, cx + radius, cy + radius)
            if self.fits(free, bbox):
                self.add("tree", "ellipse", bbox, colour=self.tint(TREE, 0.2))


def _along(bbox: Box) -> str:
    x0, y0, x1, y1 = bbox
    return "horizontal" if x1 - x0 >= y1 - y0 else "vertical"


def _road_hosts(builder: LayoutBuilder, roads: list[Structure]) -> list[Host]:
    return [(builder.mask(road), (road.params["axis"],)) for road in roads]


def _farmland(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    axes = b.pick((("horizontal",), ("vertical",), ("horizontal", "vertical")))
    width = b.uniform_px(10, 13)
    roads = [b.straight_road(axis, b.fraction(0.2, 0.8), width, kind="dirt road") for axis in axes]
    cuts = {"horizontal": [0, b.size], "vertical": [0, b.size]}  # road edges along y (horizontal roads) / x
    for road in roads:
        x0, y0, x1, y1 = road.bbox
        cuts[road.params["axis"]] += [y0, y1] if road.params["axis"] == "horizontal" else [x0, x1]
    gap = b.px(2)
    ys, xs = sorted(cuts["horizontal"]), sorted(cuts["vertical"])
    for top, bottom in zip(ys[0::2], ys[1::2]):
        for left, right in zip(xs[0::2], xs[1::2]):
            rows = np.linspace(top, bottom, int(b.rng.integers(1, 4)) + 1).astype(int)
            cols = np.linspace(left, right, int(b.rng.integers(1, 4)) + 1).astype(int)
            for y0, y1 in zip(rows[:-1], rows[1:]):
                for x0, x1 in zip(cols[:-1], cols[1:]):
                    if x1 - x0 > 3 * gap and y1 - y0 > 3 * gap:
                        b.add(
                            "field",
                            "rect",
                            (x0 + gap, y0 + gap, x1 - gap, y1 - gap),
                            colour=b.tint(b.pick(CROPS)),
                            stripe_angle=int(b.pick((0, 90, 45, 135))),
                            stripe_period=b.uniform_px(3, 7),
                            stripe_contrast=round(float(b.rng.uniform(0.08, 0.22)), 3),
                        )
    return "soil", {"vehicle": _road_hosts(b, roads)}


def _residential(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    width = b.uniform_px(12, 15)
    roads = [
        b.straight_road(axis, position, width)
        for axis in ("horizontal", "vertical")
        for position in b.spaced_positions(int(b.rng.integers(1, 3)), 0.15, 0.85, 0.3)
    ]
    free = ~b.mask(*roads, grow=b.px(4))
    b.buildings(free, kind="house", cell=b.px(22), low=10, high=17, keep=0.8)
    b.trees(~b.mask(*b.structures, grow=b.px(1)), int(b.rng.integers(15, 40)), 2, 4)
    return "grass", {"vehicle": _road_hosts(b, roads)}


def _harbor(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    size = b.size
    side = b.pick(("left", "right", "top", "bottom"))
    depth = b.fraction(0.4, 0.55)
    water_box = {
        "left": (0, 0, depth, size),
        "right": (size - depth, 0, size, size),
        "top": (0, 0, size, depth),
        "bottom": (0, size - depth, size, size),
    }[side]
    water = b.add("water", "rect", water_box, colour=b.tint(WATER))
    coast_axis = "vertical" if side in ("left", "right") else "horizontal"
    piers = []
    for position in b.spaced_positions(int(b.rng.integers(1, 4)), 0.12, 0.88, 0.22):
        length, width = int(depth * b.rng.uniform(0.3, 0.65)), b.uniform_px(6, 9)
        start = position - width // 2
        pier_box = {
            "left": (depth - length, start, depth, start + width),
            "right": (size - depth, start, size - depth + length, start + width),
            "top": (start, depth - length, start + width, depth),
            "bottom": (start, size - depth, start + width, size - depth + length),
        }[side]
        piers.append(b.add("pier", "rect", pier_box, colour=b.tint(CONCRETE)))
    offset = b.uniform_px(14, 34) + b.px(7)
    road_position = depth + offset if side in ("left", "top") else size - depth - offset
    road = b.straight_road(coast_axis, road_position, b.uniform_px(12, 14))
    hosts: dict[str, list[Host]] = {"vehicle": _road_hosts(b, [road])}
    land_structures = [water, road]
    if b.rng.random() < 0.6:
        pad_box = b.random_rect(~b.mask(*land_structures, grow=b.px(4)), b.uniform_px(36, 50), b.uniform_px(28, 38))
        if pad_box is not None:
            pad = b.add("pad", "rect", pad_box, colour=b.tint(PAD))
            land_structures.append(pad)
            hosts["storage tank"] = [(b.mask(pad), ("none",))]
    land = ~b.mask(*land_structures, grow=b.px(4))
    b.buildings(land, kind="warehouse", cell=b.px(44), low=22, high=36, keep=0.7)
    hosts["ship"] = [(b.mask(water) & ~b.mask(*piers), ("horizontal", "vertical"))]
    return "concrete", hosts


def _airport(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    size = b.size
    axis = b.pick(("horizontal", "vertical"))
    near_start = b.rng.random() < 0.5
    runway_width = b.uniform_px(20, 25)
    runway_centre = b.fraction(0.14, 0.26) if near_start else size - b.fraction(0.14, 0.26)
    b.straight_road(axis, runway_centre, runway_width, kind="runway")
    gap, depth, length = b.uniform_px(14, 24), b.fraction(0.28, 0.38), b.fraction(0.55, 0.8)
    along_start = int(b.rng.integers(0, size - length + 1))
    runway_near_edge = runway_centre + runway_width // 2 if near_start else runway_centre - runway_width // 2
    across_start = runway_near_edge + gap if near_start else runway_near_edge - gap - depth

    def oriented(along0: int, across0: int, along_len: int, across_len: int) -> Box:
        if axis == "horizontal":
            return (along0, across0, along0 + along_len, across0 + across_len)
        return (across0, along0, across0 + across_len, along0 + along_len)

    apron = b.add("apron", "rect", oriented(along_start, across_start, length, depth), colour=b.tint(CONCRETE))
    taxi_width = b.uniform_px(8, 11)
    taxi_across = runway_near_edge if near_start else runway_near_edge - gap
    for fraction in (0.2, 0.8)[: int(b.rng.integers(1, 3))]:
        along = along_start + int(fraction * length) - taxi_width // 2
        b.add("taxiway", "rect", oriented(along, taxi_across, taxi_width, gap), colour=b.tint(ASPHALT))
    terminal_depth = b.uniform_px(16, 24)
    terminal_across = across_start + depth + b.px(3) if near_start else across_start - b.px(3) - terminal_depth
    terminal_len = int(length * b.rng.uniform(0.4, 0.8))
    b.add(
        "terminal",
        "rect",
        oriented(along_start + (length - terminal_len) // 2, terminal_across, terminal_len, terminal_depth),
        colour=b.tint(b.pick(FLAT_ROOFS)),
        ridge="none",
        shadow=b.px(2),
    )
    free = ~b.mask(*b.structures, grow=b.px(3))
    b.trees(free, int(b.rng.integers(0, 15)), 2, 4)
    apron_mask = b.mask(apron)
    return "grass", {
        "plane": [(apron_mask, ("up", "right", "down", "left"))],
        "vehicle": [(apron_mask, ("horizontal", "vertical"))],
    }


def _industrial(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    axes = b.pick((("horizontal",), ("vertical",), ("horizontal", "vertical")))
    roads = [b.straight_road(axis, b.fraction(0.25, 0.75), b.uniform_px(12, 15)) for axis in axes]
    hosts: dict[str, list[Host]] = {"vehicle": _road_hosts(b, roads), "storage tank": []}
    for _ in range(int(b.rng.integers(1, 3))):
        pad_box = b.random_rect(~b.mask(*b.structures, grow=b.px(4)), b.uniform_px(40, 58), b.uniform_px(32, 46))
        if pad_box is not None:
            hosts["storage tank"].append((b.mask(b.add("pad", "rect", pad_box, colour=b.tint(PAD))), ("none",)))
    if b.rng.random() < 0.6:
        lot_box = b.random_rect(~b.mask(*b.structures, grow=b.px(4)), b.uniform_px(30, 42), b.uniform_px(22, 30))
        if lot_box is not None:
            lot = b.add("parking", "rect", lot_box, colour=b.tint(ASPHALT))
            hosts["vehicle"].append((b.mask(lot), ("horizontal", "vertical")))
    free = ~b.mask(*b.structures, grow=b.px(4))
    b.buildings(free, kind="warehouse", cell=b.px(48), low=24, high=40, keep=0.7)
    return "concrete", hosts


def _forest(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    size = b.size
    if b.rng.random() < 0.5:
        side_x, side_y = b.uniform_px(40, 90), b.uniform_px(40, 90)
        x0, y0 = int(b.rng.integers(0, size - side_x)), int(b.rng.integers(0, size - side_y))
        b.add("clearing", "ellipse", (x0, y0, x0 + side_x, y0 + side_y), colour=b.tint(GRASS_CLEARING))
    if b.rng.random() < 0.3:
        side_x, side_y = b.uniform_px(30, 70), b.uniform_px(30, 70)
        x0, y0 = int(b.rng.integers(0, size - side_x)), int(b.rng.integers(0, size - side_y))
        b.add("water", "ellipse", (x0, y0, x0 + side_x, y0 + side_y), colour=b.tint(WATER))
    roads = []
    if b.rng.random() < 0.75:
        kind = b.pick(("road", "dirt road"))
        axis = b.pick(("horizontal", "vertical"))
        roads.append(b.straight_road(axis, b.fraction(0.2, 0.8), b.uniform_px(11, 14), kind=kind))
    b.trees(~b.mask(*b.structures, grow=b.px(1)), int(b.rng.integers(60, 120)), 3, 7)
    return "forest", {"vehicle": _road_hosts(b, roads)}


def _river(b: LayoutBuilder) -> tuple[str, dict[str, list[Host]]]:
    size = b.size
    axis = b.pick(("horizontal", "vertical"))
    half_width, amplitude = b.uniform_px(13, 18), b.uniform_px(5, 16)
    centre = b.fraction(0.35, 0.65)
    extent = (centre - amplitude - half_width - 1, centre + amplitude + half_width + 1)
    bbox = (extent[0], 0, extent[1], size) if axis == "vertical" else (0, extent[0], size, extent[1])
    river = b.add(
        "river",
        "meander",
        bbox,
        colour=b.tint(WATER),
        axis=axis,
        centre=float(centre),
        half_width=float(half_width),
        amplitude=float(amplitude),
        period=round(float(b.rng.uniform(0.8, 1.5) * size), 3),
        phase=round(float(b.rng.uniform(0, 2 * np.pi)), 4),
    )
    road_axis = "horizontal" if axis == "vertical" else "vertical"
    road_width = b.uniform_px(12, 14)
    road = b.straight_road(road_axis, b.fraction(0.2, 0.8), road_width)
    crossing = b.mask(river) & b.mask(road)
    rows, cols = np.nonzero(crossing)
    bank, rail = b.px(3), b.px(2)
    x0, y0, x1, y1 = road.bbox
    if road_axis == "horizontal":
        bridge_box = (int(cols.min()) - bank, y0 - rail, int(cols.max()) + 1 + bank, y1 + rail)
    else:
        bridge_box = (x0 - rail, int(rows.min()) - bank, x1 + rail, int(rows.max()) + 1 + bank)
    bridge = b.add("bridge", "rect", bridge_box, colour=b.tint(CONCRETE, 0.04), axis=road_axis, rail=rail)
    b.trees(~b.mask(river, road, bridge, grow=b.px(2)), int(b.rng.integers(15, 40)), 2, 5)
    ship_host = b.mask(river) & ~b.mask(bridge)
    return "grass", {"vehicle": _road_hosts(b, [road]), "ship": [(ship_host, (axis,))]}


LAYOUTS: dict[str, Callable[[LayoutBuilder], tuple[str, dict[str, list[Host]]]]] = {
    "farmland": _farmland,
    "residential": _residential,
    "harbor": _harbor,
    "airport": _airport,
    "industrial": _industrial,
    "forest": _forest,
    "river": _river,
}
