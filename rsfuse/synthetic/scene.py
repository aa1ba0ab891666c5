"""Scene descriptions of the synthetic remote-sensing benchmark: vocabularies, dataclasses, region geometry.

A scene is pure, JSON-serialisable data: a scene class, a terrain, large structures painted in order, and small objects
with pixel boxes. ``placement.make_scene`` draws one at random; ``render.render_scene`` turns it into
pixels (a pure function of the description). Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SCENE_CLASSES",
    "OBJECT_KINDS",
    "COLOUR_NAMES",
    "QUADRANTS",
    "SCENE_OBJECT_KINDS",
    "REFERENCE_SIZE",
    "OBJECT_SIZES",
    "GLOBAL_GRID",
    "Box",
    "SceneObject",
    "Structure",
    "Scene",
    "local_mask",
    "structure_mask",
    "plural",
]

SCENE_CLASSES: tuple[str, ...] = ("farmland", "residential", "harbor", "airport", "industrial", "forest", "river")
OBJECT_KINDS: tuple[str, ...] = ("vehicle", "ship", "plane", "storage tank")
COLOUR_NAMES: tuple[str, ...] = ("red", "blue", "white", "yellow", "green")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

# Small-object kinds each scene class can hold (the count may still be 0); questions about counts ask among these.
SCENE_OBJECT_KINDS: dict[str, tuple[str, ...]] = {
    "farmland": ("vehicle",),
    "residential": ("vehicle",),
    "harbor": ("vehicle", "ship", "storage tank"),
    "airport": ("vehicle", "plane"),
    "industrial": ("vehicle", "storage tank"),
    "forest": ("vehicle",),
    "river": ("vehicle", "ship"),
}

# Layout lengths are given in pixels at this render size and scale linearly with the actual size.
REFERENCE_SIZE = 224
# (long side, short side) of each object kind at REFERENCE_SIZE. The tiny model's global view is 112 px with 14 px
# patches (an 8x8 grid; a patch covers 28x28 px at 224), so the global view shrinks a vehicle to 2x1 px and a tank to
# 2x2 px: the objects all but vanish there, as small objects do when a remote-sensing image is squeezed to 336 px,
# while a 56-px window (scale 0.5, encoded at 112 px) shows them at 8x4 and 8x8 px.
OBJECT_SIZES: dict[str, tuple[int, int]] = {"vehicle": (4, 2), "ship": (6, 3), "plane": (5, 5), "storage tank": (4, 4)}
GLOBAL_GRID = 8

Box = tuple[int, int, int, int]


def plural(kind: str, count: int = 2) -> str:
    """``"ship"`` -> ``"ships"`` unless ``count == 1``."""
    return kind if count == 1 else f"{kind}s"


def _box(values, *, where: str) -> Box:
    if len(values) != 4:
        raise ValueError(f"{where}: a box needs 4 integers (x0, y0, x1, y1), got {values!r}")
    x0, y0, x1, y1 = (int(v) for v in values)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: empty box {values!r}")
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class SceneObject:
    """One small object: ``kind`` in OBJECT_KINDS, ``colour`` in COLOUR_NAMES, pixel ``bbox``, drawing ``orientation``
    (``horizontal``/``vertical`` for vehicles and ships, ``up``/``right``/``down``/``left`` for planes, ``none``)."""

    kind: str
    colour: str
    bbox: Box
    orientation: str = "none"

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    def quadrant(self, size: int) -> str:
        """``"top left"`` ... ``"bottom right"`` of the object's centre in a ``size`` x ``size`` image."""
        cx, cy = self.centre
        vertical = "top" if cy < size / 2 else "bottom"
        horizontal = "left" if cx < size / 2 else "right"
        return f"{vertical} {horizontal}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "colour": self.colour, "bbox": list(self.bbox), "orientation": self.orientation}

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "object") -> "SceneObject":
        for key in ("kind", "colour", "bbox"):
            if key not in data:
                raise ValueError(f"{where}: missing field {key!r}")
        if data["kind"] not in OBJECT_KINDS:
            raise ValueError(f"{where}.kind: {data['kind']!r} is not one of {OBJECT_KINDS}")
        if data["colour"] not in COLOUR_NAMES:
            raise ValueError(f"{where}.colour: {data['colour']!r} is not one of {COLOUR_NAMES}")
        bbox = _box(data["bbox"], where=f"{where}.bbox")
        return cls(kind=data["kind"], colour=data["colour"], bbox=bbox, orientation=data.get("orientation", "none"))


SHAPES = ("rect", "ellipse", "meander")


@dataclass(frozen=True)
class Structure:
    """A large scene element (road, river, house, field, ...) painted in list order.

    ``shape``: ``rect`` fills ``bbox``; ``ellipse`` is inscribed in ``bbox``; ``meander`` is a band along
    ``params["axis"]`` whose centre line is ``centre + amplitude * sin(2 pi t / period + phase)`` with half width
    ``half_width``, clipped to ``bbox``. ``params`` also hold the drawing style (``colour`` RGB and kind-specific keys).
    """

    kind: str
    shape: str
    bbox: Box
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shape": self.shape, "bbox": list(self.bbox), "params": self.params}

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "structure") -> "Structure":
        for key in ("kind", "shape", "bbox"):
            if key not in data:
                raise ValueError(f"{where}: missing field {key!r}")
        if data["shape"] not in SHAPES:
            raise ValueError(f"{where}.shape: {data['shape']!r} is not one of {SHAPES}")
        bbox = _box(data["bbox"], where=f"{where}.bbox")
        return cls(kind=data["kind"], shape=data["shape"], bbox=bbox, params=dict(data.get("params", {})))


@dataclass(frozen=True)
class Scene:
    """A full scene: everything ``render_scene`` needs, including the seed of its textures."""

    scene_class: str
    size: int
    terrain: str
    texture_seed: int
    structures: tuple[Structure, ...]
    objects: tuple[SceneObject, ...]

    def count(self, kind: str) -> int:
        return sum(obj.kind == kind for obj in self.objects)

    def objects_of(self, kind: str) -> tuple[SceneObject, ...]:
        return tuple(obj for obj in self.objects if obj.kind == kind)

    @property
    def candidate_kinds(self) -> tuple[str, ...]:
        return SCENE_OBJECT_KINDS[self.scene_class]

    def to_dict(self) -> dict:
        return {
            "scene_class": self.scene_class,
            "size": self.size,
            "terrain": self.terrain,
            "texture_seed": self.texture_seed,
            "structures": [structure.to_dict() for structure in self.structures],
            "objects": [obj.to_dict() for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "scene") -> "Scene":
        for key in ("scene_class", "size", "terrain", "texture_seed", "structures", "objects"):
            if key not in data:
                raise ValueError(f"{where}: missing field {key!r}")
        if data["scene_class"] not in SCENE_CLASSES:
            raise ValueError(f"{where}.scene_class: {data['scene_class']!r} is not one of {SCENE_CLASSES}")
        return cls(
            scene_class=data["scene_class"],
            size=int(data["size"]),
            terrain=data["terrain"],
            texture_seed=int(data["texture_seed"]),
            structures=tuple(
                Structure.from_dict(item, where=f"{where}.structures[{i}]") for i, item in enumerate(data["structures"])
            ),
            objects=tuple(
                SceneObject.from_dict(item, where=f"{where}.objects[{i}]") for i, item in enumerate(data["objects"])
            ),
        )


def local_mask(structure: Structure, size: int) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """``(window, mask)``: the bbox window clipped to the image and the structure's bool mask there (None = all)."""
    x0, y0, x1, y1 = structure.bbox
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size, x1), min(size, y1)
    window = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    if structure.shape == "rect":
        return window, None
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    if structure.shape == "ellipse":
        bx0, by0, bx1, by1 = structure.bbox
        cx, cy, rx, ry = (bx0 + bx1) / 2, (by0 + by1) / 2, (bx1 - bx0) / 2, (by1 - by0) / 2
        return window, ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    params = structure.params
    along, across = (ys, xs) if params["axis"] == "vertical" else (xs, ys)
    centre = params["centre"] + params["amplitude"] * np.sin(2 * np.pi * along / params["period"] + params["phase"])
    return window, np.abs(across - centre) <= params["half_width"]


def structure_mask(structure: Structure, size: int) -> np.ndarray:
    """Bool ``[size, size]`` mask of the pixels ``structure`` covers."""
    mask = np.zeros((size, size), dtype=bool)
    window, local = local_mask(structure, size)
    mask[window] = True if local is None else local
    return mask
