"""Small objects placed in a layout's hosts, and ``make_scene`` (a layout of `rsfuse.synthetic.layouts` + its objects).

Objects keep a margin inside their host, a gap to each other, and never straddle the image's centre lines (so their
quadrant is unambiguous).
"""

import numpy as np

from rsfuse.synthetic.layouts import LAYOUTS, Host, LayoutBuilder
from rsfuse.synthetic.scene import (
    COLOUR_NAMES,
    OBJECT_SIZES,
    REFERENCE_SIZE,
    SCENE_CLASSES,
    SCENE_OBJECT_KINDS,
    Scene,
    SceneObject,
)

__all__ = ["COUNT_PROBABILITIES", "make_scene", "object_sides"]

# P(count = 0..5) for each candidate object kind of a scene.
COUNT_PROBABILITIES = (0.22, 0.26, 0.16, 0.13, 0.12, 0.11)


def object_sides(kind: str, *, size: int, object_scale: float = 1.0) -> tuple[int, int]:
    """(long, short) side in pixels of a ``kind`` object in a ``size``-px image: ``OBJECT_SIZES`` scaled by
    ``size / REFERENCE_SIZE`` and ``object_scale``, rounded, at least 1."""
    return tuple(max(1, int(round(side * object_scale * (size / REFERENCE_SIZE)))) for side in OBJECT_SIZES[kind])


def _object_shape(kind: str, orientation: str, builder: LayoutBuilder) -> tuple[int, int]:
    """(width, height) in pixels of an object drawn with ``orientation``."""
    long_side, short_side = object_sides(kind, size=builder.size, object_scale=builder.object_scale)
    return (short_side, long_side) if orientation == "vertical" else (long_side, short_side)


def _valid_corners(allowed: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """Bool ``[size, size]``: top-left corners where the box, widened by ``margin``, lies in ``allowed`` and the box
    does not straddle the vertical or horizontal centre line."""
    size = allowed.shape[0]
    table = np.zeros((size + 1, size + 1), dtype=np.int32)
    table[1:, 1:] = allowed.astype(np.int32).cumsum(0).cumsum(1)
    outer_w, outer_h = width + 2 * margin, height + 2 * margin
    valid = np.zeros((size, size), dtype=bool)
    if outer_w > size or outer_h > size:
        return valid
    window_sums = table[outer_h:, outer_w:] - table[:-outer_h, outer_w:] - table[outer_h:, :-outer_w]
    inside = window_sums + table[:-outer_h, :-outer_w] == outer_w * outer_h
    valid[margin : margin + inside.shape[0], margin : margin + inside.shape[1]] = inside
    corner = np.arange(size)
    half = size / 2
    keep_x = (corner + width <= half) | (corner >= half)
    keep_y = (corner + height <= half) | (corner >= half)
    return valid & keep_y[:, None] & keep_x[None, :]


def _place(
    builder: LayoutBuilder, kind: str, count: int, hosts: list[Host], occupied: np.ndarray
) -> list[SceneObject]:
    """Place up to ``count`` objects of ``kind`` in ``hosts`` (fewer when space runs out); marks ``occupied``."""
    rng, margin = builder.rng, builder.px(2)
    placed: list[SceneObject] = []
    areas = np.array([mask.sum() for mask, _ in hosts], dtype=np.float64)
    if not hosts or areas.sum() == 0:
        return placed
    for _ in range(count):
        order = rng.choice(len(hosts), size=len(hosts), replace=False, p=areas / areas.sum())
        for host_index in order:
            mask, orientations = hosts[int(host_index)]
            orientation = orientations[int(rng.integers(len(orientations)))]
            width, height = _object_shape(kind, orientation, builder)
            corners = np.flatnonzero(_valid_corners(mask & ~occupied, width, height, margin))
            if corners.size == 0:
                continue
            y0, x0 = divmod(int(corners[int(rng.integers(corners.size))]), builder.size)
            occupied[y0 : y0 + height, x0 : x0 + width] = True
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
            placed.append(SceneObject(kind, colour, (x0, y0, x0 + width, y0 + height), orientation))
            break
    return placed


def make_scene(
    rng: np.random.Generator, *, size: int, scene_class: str | None = None, object_scale: float = 1.0
) -> Scene:
    """Draw one random scene of ``scene_class`` (random when None) at ``size`` x ``size`` pixels, the small objects'
    sides (``OBJECT_SIZES``) multiplied by ``object_scale`` (rounded, at least 1 px)."""
    if scene_class is None:
        scene_class = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
    if scene_class not in LAYOUTS:
        raise ValueError(f"scene_class: {scene_class!r} is not one of {SCENE_CLASSES}")
    builder = LayoutBuilder(rng, size, object_scale=object_scale)
    terrain, hosts = LAYOUTS[scene_class](builder)
    occupied = np.zeros((size, size), dtype=bool)
    objects: list[SceneObject] = []
    for kind in SCENE_OBJECT_KINDS[scene_class]:
        count = int(rng.choice(len(COUNT_PROBABILITIES), p=COUNT_PROBABILITIES))
        objects += _place(builder, kind, count, hosts.get(kind, []), occupied)
    return Scene(
        scene_class=scene_class,
        size=size,
        terrain=terrain,
        texture_seed=int(rng.integers(2**31)),
        structures=tuple(builder.structures),
        objects=tuple(objects),
    )
