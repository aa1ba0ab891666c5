"""Rendering of synthetic scenes: a pure function from a ``Scene`` description to ``uint8 [size, size, 3]`` RGB.

Textures come from value noise seeded by ``scene.texture_seed``; small objects are drawn last as flat-coloured stencils
that stay inside their boxes (no shadows, no blur), so each object changes only the pixels of its box.
"""

import numpy as np
from PIL import Image

from rsfuse.synthetic.scene import REFERENCE_SIZE, Scene, SceneObject, Structure, local_mask

__all__ = ["OBJECT_RGB", "TERRAIN_RGB", "object_stencil", "render_scene"]

OBJECT_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "blue": (40, 80, 228),
    "white": (244, 244, 238),
    "yellow": (240, 204, 40),
    "green": (46, 182, 72),
}
TERRAIN_RGB: dict[str, tuple[int, int, int]] = {
    "grass": (82, 114, 56),
    "soil": (134, 110, 80),
    "concrete": (150, 148, 140),
    "forest": (36, 72, 38),
}
# (coarse, fine) texture amplitudes, relative to the base colour.
TERRAIN_TEXTURE = {"grass": (0.14, 0.08), "soil": (0.12, 0.08), "concrete": (0.08, 0.06), "forest": (0.14, 0.32)}
STRUCTURE_TEXTURE = {"water": (0.05, 0.02), "river": (0.05, 0.02), "field": (0.06, 0.05), "clearing": (0.10, 0.08)}
DEFAULT_TEXTURE = (0.04, 0.04)
MARKING_RGB = (226, 226, 220)


def _value_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape [size, size]: a random grid with ``cell`` px spacing, bilinearly upsampled."""
    grid = max(2, size // max(1, cell) + 2)
    small = rng.uniform(-1.0, 1.0, size=(grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


class _Canvas:
    """Float RGB image plus the shared noise fields used to texture every region."""

    def __init__(self, scene: Scene) -> None:
        size, scale = scene.size, scene.size / REFERENCE_SIZE
        self.size, self.scale = size, scale
        self.rng = np.random.default_rng(scene.texture_seed)
        self.fine = _value_noise(self.rng, size, max(1, round(3 * scale)))
        self.coarse = 0.6 * _value_noise(self.rng, size, max(2, round(24 * scale))) + 0.4 * _value_noise(
            self.rng, size, max(2, round(64 * scale))
        )
        hue = _value_noise(self.rng, size, max(2, round(48 * scale)))
        self.tint = hue[..., None] * np.array([4.0, 3.0, -3.0], dtype=np.float32)
        self.image = np.zeros((size, size, 3), dtype=np.float32)

    def px(self, length: float) -> int:
        return max(1, int(round(length * self.scale)))

    def textured(self, window, rgb, amplitudes: tuple[float, float]) -> np.ndarray:
        """Base colour ``rgb`` modulated by the noise fields inside ``window``: ``[h, w, 3]``."""
        coarse_amp, fine_amp = amplitudes
        shade = coarse_amp * self.coarse[window] + fine_amp * self.fine[window]
        shade += 1.0
        pixels = shade[..., None] * np.asarray(rgb, dtype=np.float32)
        pixels += self.tint[window]
        return pixels

    def paint(self, window, pixels: np.ndarray, mask: np.ndarray | None) -> None:
        region = self.image[window]
        if mask is None:
            region[...] = pixels
        else:
            region[mask] = pixels[mask]


def _stripes(shape: tuple[int, int], origin: tuple[int, int], angle: int, period: int) -> np.ndarray:
    """0/1 stripe pattern of ``period`` px along direction ``angle`` degrees, in image coordinates."""
    ys = np.arange(shape[0])[:, None] + origin[0]
    xs = np.arange(shape[1])[None, :] + origin[1]
    theta = np.deg2rad(angle)
    coordinate = xs * np.cos(theta) + ys * np.sin(theta)
    return (np.floor(coordinate / period) % 2).astype(np.float32)


def _paint_structure(canvas: _Canvas, structure: Structure) -> None:
    window, mask = local_mask(structure, canvas.size)
    if window[0].stop <= window[0].start or window[1].stop <= window[1].start:
        return
    kind, params = structure.kind, structure.params
    if params.get("shadow"):
        offset = params["shadow"]
        x0, y0, x1, y1 = structure.bbox
        rows = slice(max(0, y0 + offset), min(canvas.size, y1 + offset))
        cols = slice(max(0, x0 + offset), min(canvas.size, x1 + offset))
        canvas.image[rows, cols] *= 0.55
    pixels = canvas.textured(window, params["colour"], STRUCTURE_TEXTURE.get(kind, DEFAULT_TEXTURE))
    height, width = pixels.shape[:2]
    if kind == "field":
        origin = (window[0].start, window[1].start)
        stripes = _stripes((height, width), origin, params["stripe_angle"], params["stripe_period"])
        pixels *= (1.0 - params["stripe_contrast"] * stripes)[..., None]
    elif kind == "house":
        ridge_axis = 0 if params["ridge"] == "horizontal" else 1
        half = pixels.shape[ridge_axis] // 2
        sunny = [slice(None), slice(None)]
        sunny[ridge_axis] = slice(0, half)
        shaded = [slice(None), slice(None)]
        shaded[ridge_axis] = slice(half, None)
        pixels[tuple(sunny)] *= 1.12
        pixels[tuple(shaded)] *= 0.80
    elif kind in ("warehouse", "terminal"):
        step = canvas.px(5)
        long_axis = 1 if width >= height else 0
        ribs = [slice(None), slice(None)]
        ribs[long_axis] = slice(step // 2, None, step)
        pixels[tuple(ribs)] *= 0.9
        pixels[[0, -1], :] *= 0.8
        pixels[:, [0, -1]] *= 0.8
    elif kind == "tree":
        ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
        xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
        pixels *= (1.15 - 0.4 * np.sqrt(xs**2 + ys**2))[..., None]
    elif kind == "runway":
        _runway_markings(canvas, pixels, params["axis"])
    elif kind == "bridge":
        rail = params["rail"]
        if params["axis"] == "horizontal":
            pixels[:rail] *= 0.65
            pixels[-rail:] *= 0.65
        else:
            pixels[:, :rail] *= 0.65
            pixels[:, -rail:] *= 0.65
    canvas.paint(window, pixels, mask)


def _runway_markings(canvas: _Canvas, pixels: np.ndarray, axis: str) -> None:
    """White edge lines and a dashed centre line, drawn in place on the runway's ``[h, w, 3]`` pixels."""
    view = pixels if axis == "horizontal" else pixels.transpose(1, 0, 2)  # rows = across, columns = along
    across = view.shape[0]
    line = canvas.px(1)
    view[canvas.px(2) : canvas.px(2) + line] = MARKING_RGB
    view[across - canvas.px(2) - line : across - canvas.px(2)] = MARKING_RGB
    dash, gap = canvas.px(10), canvas.px(8)
    centre = across // 2
    along = np.arange(view.shape[1])
    dashed = (along % (dash + gap)) < dash
    view[centre - line // 2 : centre - line // 2 + line, dashed] = MARKING_RGB


def object_stencil(obj: SceneObject) -> np.ndarray:
    """Shade factors ``[h, w]`` of an object's drawing inside its bbox (0 = background shows through)."""
    x0, y0, x1, y1 = obj.bbox
    width, height = x1 - x0, y1 - y0
    if obj.kind == "storage tank":
        ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - height / 2
        xs = np.arange(width, dtype=np.float32)[None, :] + 0.5 - width / 2
        radius = np.sqrt(xs**2 + ys**2)
        outer = min(width, height) / 2
        stencil = np.where(radius <= outer, 1.0, 0.0)
        stencil = np.where((radius > outer - 1.0) & (radius <= outer), 0.8, stencil)
        return np.where(radius < outer / 3, 1.1, stencil).astype(np.float32)
    if obj.kind == "plane":
        return _plane_stencil(width, obj.orientation)
    # Vehicles and ships are drawn vertically (front at row 0) and transposed for horizontal ones.
    long_side, short_side = (height, width) if obj.orientation == "vertical" else (width, height)
    stencil = np.ones((long_side, short_side), dtype=np.float32)
    if obj.kind == "vehicle":
        stencil[max(1, round(long_side * 0.3))] = 0.55
    else:
        stencil[0, :] = 0.0
        stencil[0, (short_side - 1) // 2 : short_side // 2 + 1] = 1.0
        if short_side > 2:
            stencil[1, [0, -1]] = 0.0
        stencil[round(long_side * 0.6) : round(long_side * 0.85), 1:-1] = 0.75
    return stencil if obj.orientation == "vertical" else stencil.T.copy()


def _plane_stencil(side: int, orientation: str) -> np.ndarray:
    stencil = np.zeros((side, side), dtype=np.float32)
    centre = side // 2
    body = max(1, round(side / 7))
    stencil[:, centre - body // 2 : centre - body // 2 + body] = 1.0
    wing_row, wing = round(side * 0.3), max(1, round(side / 5))
    stencil[wing_row : wing_row + wing, :] = 1.0
    tail = max(1, round(side / 7))
    stencil[side - tail :, max(0, centre - side // 4) : centre + side // 4 + 1] = 1.0
    turns = {"up": 0, "left": 1, "down": 2, "right": 3}[orientation]
    return np.ascontiguousarray(np.rot90(stencil, turns))


def _paint_object(canvas: _Canvas, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.bbox
    stencil = object_stencil(obj)
    region = canvas.image[y0:y1, x0:x1]
    drawn = stencil > 0
    region[drawn] = np.asarray(OBJECT_RGB[obj.colour], dtype=np.float32) * stencil[drawn][:, None]


def render_scene(scene: Scene, *, draw_objects: bool = True) -> np.ndarray:
    """RGB ``uint8 [size, size, 3]`` of ``scene``; ``draw_objects=False`` leaves the small objects out (same noise)."""
    if scene.terrain not in TERRAIN_RGB:
        raise ValueError(f"scene.terrain: {scene.terrain!r} is not one of {tuple(TERRAIN_RGB)}")
    canvas = _Canvas(scene)
    everything = (slice(None), slice(None))
    terrain = canvas.textured(everything, TERRAIN_RGB[scene.terrain], TERRAIN_TEXTURE[scene.terrain])
    canvas.paint(everything, terrain, None)
    for structure in scene.structures:
        _paint_structure(canvas, structure)
    if draw_objects:
        for obj in scene.objects:
            _paint_object(canvas, obj)
    np.clip(canvas.image, 0.0, 255.0, out=canvas.image)
    canvas.image += 0.5
    return canvas.image.astype(np.uint8)
