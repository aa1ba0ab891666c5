"""MultiScaleCanvas, window cutting and stitching: shapes, exact geometry, both window layouts, blends, validation."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from einops import reduce
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsfuse.encoders import MultiScaleCanvas
from rsfuse.encoders.stitch import blend_weights, stitch_windows
from rsfuse.encoders.windows import cut_windows, plan_window_grid


class PatchMeanTower(nn.Module):
    """Fake tower: hidden state i of a patch = (per-channel patch mean @ mixing) · (i + 1) + i; counts its calls."""

    def __init__(self, *, patch_size: int, depth: int, width: int, channels: int = 3, seed: int = 0):
        super().__init__()
        self.config = SimpleNamespace(patch_size=patch_size, hidden_size=width)
        self.num_layers = depth
        generator = torch.Generator().manual_seed(seed)
        mixing = torch.eye(channels, width) if width == channels else torch.randn(channels, width, generator=generator)
        self.register_buffer("mixing", mixing)
        self.calls: list[tuple[int, list[int], bool]] = []

    def forward_intermediates(self, pixels, indices, stop_early=True):
        self.calls.append((pixels.shape[0], list(indices), stop_early))
        means = reduce(pixels, "n c (h p) (w q) -> n (h w) c", "mean", p=self.config.patch_size, q=self.config.patch_size)
        return [(means @ self.mixing) * (index + 1) + index for index in indices]


def hand_blend_weights(side: int, blend: str) -> torch.Tensor:
    """docs/DESIGN_NOTES.md §1.6 written out by hand: Hann h[n] = 0.5 − 0.5·cos(2πn / (side − 1)), weights h[i]·h[j]; mean = ones.

    Independent of the library: plain Python loops over the formula (never ``rsfuse``'s ``blend_weights``).
    """
    if blend == "mean":
        return torch.ones(side, side)
    h = [0.5 - 0.5 * math.cos(2 * math.pi * n / (side - 1)) for n in range(side)]
    return torch.tensor([[h[i] * h[j] for j in range(side)] for i in range(side)], dtype=torch.float32)


def loop_canvas(tower, pixels, *, canvas_size, base_window, scales, layers, blend, layout):
    """Slow, independent reference: one window at a time, windows' planes picked by hand for the reference layout."""
    patch = tower.config.patch_size
    canvas = pixels if pixels.shape[-1] == canvas_size else F.interpolate(
        pixels, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False
    )
    batch, channels = canvas.shape[:2]
    tokens = canvas_size // patch
    base_side = base_window // patch
    per_scale = []
    for scale in scales:
        window = round(base_window * scale)
        stride = window // 2
        per_side = (canvas_size - window) // stride + 1
        side = window // patch
        stride_tokens = side // 2
        weight = hand_blend_weights(side, blend)
        out = torch.zeros(batch, len(layers), tokens, tokens, tower.config.hidden_size)
        total_weight = torch.zeros(tokens, tokens)
        for b in range(batch):
            for k in range(per_side * per_side):
                row, col = divmod(k, per_side)
                if layout == "spatial":
                    crop = canvas[b, :, row * stride : row * stride + window, col * stride : col * stride + window]
                else:
                    planes = []
                    for j in range(channels):
                        plane = k * channels + j
                        source_channel, cell = divmod(plane, per_side * per_side)
                        source_row, source_col = divmod(cell, per_side)
                        planes.append(
                            canvas[
                                b,
                                source_channel,
                                source_row * stride : source_row * stride + window,
                                source_col * stride : source_col * stride + window,
                            ]
                        )
                    crop = torch.stack(planes)
                crop = F.interpolate(crop[None], size=(base_window, base_window), mode="bilinear", align_corners=False)
                states = tower.forward_intermediates(crop, list(layers))
                top, left = row * stride_tokens, col * stride_tokens
                for li, state in enumerate(states):
                    grid = state[0].reshape(base_side, base_side, -1).permute(2, 0, 1)
                    pooled = F.avg_pool2d(grid[None], base_side // side)[0].permute(1, 2, 0)
                    out[b, li, top : top + side, left : left + side] += weight[..., None] * pooled
                if b == 0:
                    total_weight[top : top + side, left : left + side] += weight
        per_scale.append(out / total_weight.clamp_min(1e-6)[..., None])
    return torch.stack(per_scale, dim=1)


@st.composite
def canvas_configs(draw):
    patch = draw(st.sampled_from([1, 2, 3]))
    base_side = draw(st.sampled_from([4, 6, 8, 12]))
    blend = draw(st.sampled_from(["hann", "mean"]))
    min_side = 4 if blend == "hann" or base_side > 6 else 2
    sides = [d for d in range(min_side, base_side + 1) if base_side % d == 0 and d % 2 == 0]
    chosen = draw(st.lists(st.sampled_from(sides), min_size=1, max_size=len(sides), unique=True))
    canvas_tokens = draw(st.integers(min_value=base_side, max_value=2 * base_side + 2))
    depth = draw(st.integers(min_value=1, max_value=5))
    layers = sorted(draw(st.sets(st.integers(min_value=0, max_value=depth), min_size=1, max_size=3)))
    return dict(
        patch=patch,
        base_window=base_side * patch,
        canvas_size=canvas_tokens * patch,
        scales=tuple(side / base_side for side in chosen),
        layers=tuple(layers),
        depth=depth,
        blend=blend,
        layout=draw(st.sampled_from(["spatial", "reference"])),
        batch=draw(st.integers(min_value=1, max_value=2)),
        width=draw(st.sampled_from([3, 5])),
        chunk_size=draw(st.sampled_from([None, 1, 4])),
        input_size=draw(st.sampled_from([None, 7])),
    )


@settings(max_examples=15)
@given(config=canvas_configs(), seed=st.integers(0, 2**16))
def test_canvas_matches_loop_reference_and_batches_each_scale(config, seed):
    tower = PatchMeanTower(patch_size=config["patch"], depth=config["depth"], width=config["width"], seed=seed)
    canvas = MultiScaleCanvas(
        tower,
        canvas_size=config["canvas_size"],
        base_window=config["base_window"],
        window_scales=config["scales"],
        layers=config["layers"],
        blend=config["blend"],
        window_layout=config["layout"],
        chunk_size=config["chunk_size"],
    )
    size = config["input_size"] or config["canvas_size"]
    pixels = torch.randn(config["batch"], 3, size, size, generator=torch.Generator().manual_seed(seed))
    out = canvas(pixels)
    expected_shape = canvas.output_shape(config["batch"], config["width"])
    tokens = config["canvas_size"] // config["patch"]
    assert expected_shape == (config["batch"], len(config["scales"]), len(config["layers"]), tokens, tokens, config["width"])
    assert out.shape == expected_shape
    expected_calls = sum(
        math.ceil(config["batch"] * n * n / (config["chunk_size"] or config["batch"] * n * n))
        for n in canvas.windows_per_side
    )
    assert len(tower.calls) == expected_calls
    assert all(indices == list(config["layers"]) and stop_early for _, indices, stop_early in tower.calls)
    assert all(batch <= (config["chunk_size"] or batch) for batch, _, _ in tower.calls)
    tower.calls.clear()
    reference = loop_canvas(
        tower,
        pixels,
        canvas_size=config["canvas_size"],
        base_window=config["base_window"],
        scales=config["scales"],
        layers=config["layers"],
        blend=config["blend"],
        layout=config["layout"],
    )
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_paper_geometry_and_shape():
    tower = PatchMeanTower(patch_size=14, depth=24, width=8)
    canvas = MultiScaleCanvas(tower, window_scales=(0.5, 1.0))
    assert canvas.windows_per_side == (7, 3)
    assert canvas.window_token_sides == (12, 24)
    assert canvas.canvas_tokens == 48
    assert canvas.windows_per_image == 58
    assert [(g.window_pixels, g.stride_pixels, g.stride_tokens, g.pool) for g in canvas.grids] == [
        (168, 84, 6, 2),
        (336, 168, 12, 1),
    ]
    out = canvas(torch.randn(1, 3, 336, 336))
    assert out.shape == (1, 2, 3, 48, 48, 8)
    assert [batch for batch, _, _ in tower.calls] == [49, 9]
    assert torch.equal(out[:, :, :, 0], torch.zeros_like(out[:, :, :, 0]))
    assert torch.equal(out[:, :, :, 47], torch.zeros_like(out[:, :, :, 47]))
    assert torch.equal(out[:, :, :, :, 0], torch.zeros_like(out[:, :, :, :, 0]))
    assert torch.equal(out[:, :, :, :, 47], torch.zeros_like(out[:, :, :, :, 47]))


def test_resize_path_equals_explicit_bilinear_upsample():
    tower = PatchMeanTower(patch_size=2, depth=2, width=4)
    canvas = MultiScaleCanvas(tower, canvas_size=32, base_window=16, layers=(1, 2))
    pixels = torch.randn(2, 3, 16, 16)
    upsampled = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(canvas(pixels), canvas(upsampled), rtol=0, atol=0)


@given(
    patch=st.sampled_from([1, 2, 4]),
    per_patch=st.booleans(),
    slopes=st.tuples(*[st.floats(-2, 2) for _ in range(6)]),
    blend=st.sampled_from(["hann", "mean"]),
)
def test_spatial_layout_reproduces_the_image_summarised_per_patch(patch, per_patch, slopes, blend):
    """Identity patch-mean tower: interior canvas tokens equal the canvas image's patch means.

    Scale 1.0 holds for any image; scale 0.5 (upsample, encode, 2×2 pool) holds exactly for a linear ramp, away from
    window borders, i.e. wherever the Hann weights are positive.
    """
    base_side, canvas_tokens = 8, 16
    size = canvas_tokens * patch
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    ramp = torch.stack([slopes[2 * c] * ys + slopes[2 * c + 1] * xs + c for c in range(3)]).float()[None]
    image = torch.randn(1, 3, size, size) if per_patch else ramp
    scales = (1.0,) if per_patch else (1.0, 0.5)
    if not per_patch and blend == "mean":
        scales = (1.0,)
    tower = PatchMeanTower(patch_size=patch, depth=1, width=3)
    canvas = MultiScaleCanvas(
        tower, canvas_size=size, base_window=base_side * patch, window_scales=scales, layers=(0,), blend=blend
    )
    out = canvas(image)[0, :, 0]  # [S, T, T, 3]; layer 0 of the fake tower is the identity
    expected = reduce(image[0], "c (h p) (w q) -> h w c", "mean", p=patch, q=patch)
    inner = slice(1, canvas_tokens - 1) if blend == "hann" else slice(0, canvas_tokens)
    for s in range(len(scales)):
        torch.testing.assert_close(out[s, inner, inner], expected[inner, inner], rtol=1e-4, atol=1e-4)


@functools.cache
def _identity_canvas(size: int) -> torch.Tensor:
    """Pixel (c, y, x) holds c·10⁶ + y·10³ + x, exact in float32 up to 672 px."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([c * 1_000_000 + ys * 1000 + xs for c in range(3)]).float()[None]


def _plane_source(window_plane: torch.Tensor, stride: int) -> tuple[int, int, int]:
    """(source channel, window row, window col) of a cut plane, read from its top-left pixel."""
    value = int(window_plane[0, 0])
    channel, rest = divmod(value, 1_000_000)
    y, x = divmod(rest, 1000)
    assert torch.equal(window_plane, _identity_canvas(672)[0, channel, y : y + window_plane.shape[0], x : x + window_plane.shape[1]])
    return channel, y // stride, x // stride


def test_reference_layout_follows_the_released_memory_order():
    image = _identity_canvas(672)
    big = plan_window_grid(scale=1.0, canvas_size=672, base_window=336, patch_size=14)
    small = plan_window_grid(scale=0.5, canvas_size=672, base_window=336, patch_size=14)
    windows = cut_windows(image, big, layout="reference")
    assert windows.shape == (9, 3, 336, 336)
    assert [_plane_source(windows[0, j], 168) for j in range(3)] == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]
    assert [_plane_source(windows[3, j], 168) for j in range(3)] == [(1, 0, 0), (1, 0, 1), (1, 0, 2)]
    assert [_plane_source(windows[1, j], 168) for j in range(3)] == [(0, 1, 0), (0, 1, 1), (0, 1, 2)]
    assert [_plane_source(windows[8, j], 168) for j in range(3)] == [(2, 2, 0), (2, 2, 1), (2, 2, 2)]
    windows = cut_windows(image, small, layout="reference")
    assert windows.shape == (49, 3, 168, 168)
    assert [_plane_source(windows[2, j], 84) for j in range(3)] == [(0, 0, 6), (0, 1, 0), (0, 1, 1)]
    assert [_plane_source(windows[16, j], 84) for j in range(3)] == [(0, 6, 6), (1, 0, 0), (1, 0, 1)]
    spatial = cut_windows(image, small, layout="spatial")
    assert [_plane_source(spatial[9, j], 84) for j in range(3)] == [(0, 1, 2), (1, 1, 2), (2, 1, 2)]


def test_reference_layout_keeps_samples_apart_and_stitches_window_k_at_its_cell():
    grid = plan_window_grid(scale=1.0, canvas_size=12, base_window=8, patch_size=2)
    images = torch.stack([torch.full((3, 12, 12), 10.0 * b) + torch.arange(3)[:, None, None] for b in range(2)])
    windows = cut_windows(images, grid, layout="reference")
    assert windows.shape == (2 * 4, 3, 8, 8)
    # Sample 1's windows only hold sample 1's values; window k of a sample holds channels (3k + j) // 4.
    for b in range(2):
        for k in range(4):
            expected = torch.tensor([10.0 * b + (3 * k + j) // 4 for j in range(3)])
            torch.testing.assert_close(windows[b * 4 + k, :, 0, 0], expected)


@given(
    side=st.sampled_from([4, 6, 8, 12]),
    per_side=st.integers(1, 5),
    value=st.floats(-5, 5).filter(lambda v: abs(v) > 1e-3),
    blend=st.sampled_from(["hann", "mean"]),
)
def test_stitching_a_constant_gives_the_constant_where_weighted_and_zero_on_the_hann_border(side, per_side, value, blend):
    stride = side // 2
    canvas_side = (per_side - 1) * stride + side
    windows = torch.full((1, 2, per_side * per_side, side, side, 3), value)
    out = stitch_windows(windows, per_side=per_side, stride=stride, canvas_side=canvas_side, blend=blend)
    weight = hand_blend_weights(side, blend)
    coverage = torch.zeros(canvas_side, canvas_side)
    for row in range(per_side):
        for col in range(per_side):
            coverage[row * stride : row * stride + side, col * stride : col * stride + side] += weight
    positive = coverage > 0
    torch.testing.assert_close(out[0, :, positive], torch.full_like(out[0, :, positive], value))
    assert torch.equal(out[0, :, ~positive], torch.zeros_like(out[0, :, ~positive]))
    if blend == "hann":
        for edge in (0, canvas_side - 1):
            assert torch.equal(out[:, :, edge], torch.zeros_like(out[:, :, edge]))
            assert torch.equal(out[:, :, :, edge], torch.zeros_like(out[:, :, :, edge]))
    else:
        assert bool(positive.all())


@pytest.mark.parametrize("side", [4, 5, 8, 12, 24])
def test_blend_weight_values_follow_the_hann_formula(side):
    hann = blend_weights(side, "hann")
    expected = hand_blend_weights(side, "hann")
    torch.testing.assert_close(hann, expected, rtol=0, atol=1e-6)
    # The same numbers from torch.hann_window(periodic=False), as docs/DESIGN_NOTES.md §1.6 states them.
    profile = torch.hann_window(side, periodic=False, dtype=torch.float64)
    torch.testing.assert_close(hann.double(), torch.outer(profile, profile), rtol=0, atol=1e-6)
    # Spot values worked by hand: zero ends, symmetric, peak 1 at the centre of an odd window.
    assert hann[0].abs().max() == 0 and hann[:, -1].abs().max() == 0
    if side == 5:  # h = [0, 0.5, 1, 0.5, 0]
        assert hann[1, 1] == 0.25 and hann[2, 2] == 1.0 and hann[1, 2] == 0.5
    if side == 4:  # h = [0, 0.75, 0.75, 0]
        torch.testing.assert_close(hann[1, 2], torch.tensor(0.5625))
    torch.testing.assert_close(blend_weights(side, "mean"), torch.ones(side, side), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("side", "per_side", "blend"),
    [(4, 3, "hann"), (8, 2, "hann"), (12, 3, "hann"), (24, 3, "hann"), (6, 4, "mean")],
)
def test_stitched_random_windows_equal_a_hand_weighted_average(side, per_side, blend):
    """Random (non-constant) windows, so the result depends on the weights' values; expected side by plain loops.

    (Sides 4 and 6 overlap only positions of equal weight, so any symmetric zero-ended window passes them; sides 8, 12
    and 24 — the paper's 1.0 scale — do not.)"""
    stride = side // 2
    canvas_side = (per_side - 1) * stride + side
    generator = torch.Generator().manual_seed(side * 10 + per_side)
    windows = torch.randn(2, 2, per_side * per_side, side, side, 3, generator=generator)
    out = stitch_windows(windows, per_side=per_side, stride=stride, canvas_side=canvas_side, blend=blend)
    h = hand_blend_weights(side, blend).tolist()
    expected = torch.zeros(2, 2, canvas_side, canvas_side, 3)
    for y in range(canvas_side):
        for x in range(canvas_side):
            numerator = torch.zeros(2, 2, 3)
            denominator = 0.0
            for k in range(per_side * per_side):
                row, col = divmod(k, per_side)
                i, j = y - row * stride, x - col * stride
                if 0 <= i < side and 0 <= j < side:
                    numerator += h[i][j] * windows[:, :, k, i, j]
                    denominator += h[i][j]
            expected[:, :, y, x] = numerator / max(denominator, 1e-6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_stitch_rejects_a_window_count_that_does_not_tile():
    with pytest.raises(ValueError, match="do not tile"):
        stitch_windows(torch.zeros(1, 1, 4, 4, 4, 2), per_side=2, stride=2, canvas_side=10, blend="hann")
    with pytest.raises(ValueError, match="blend must be one of"):
        blend_weights(4, "gauss")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(canvas_size=16, base_window=32), "base_window 32 px is larger than the canvas"),
        (dict(window_scales=()), "window_scales is empty"),
        (dict(window_scales=(1.0, 1.0)), "duplicate scale"),
        (dict(window_scales=(0.3,)), "window scale 0.3"),
        (dict(window_scales=(0.75,)), "does not snap to the patch grid"),
        (dict(window_scales=(1.5,)), r"must be a number in \(0, 1\]"),
        (dict(window_scales=(0.25,)), "Hann"),
        (dict(layers=(3, 7)), "layer index 7 is outside"),
        (dict(layers=()), "layers is empty"),
        (dict(layers=(4, 2)), "strictly ascending"),
        (dict(blend="gauss"), "blend must be one of"),
        (dict(window_layout="diagonal"), "window_layout must be one of"),
        (dict(chunk_size=0), "chunk_size must be a positive int"),
        (dict(canvas_size=33), "canvas_size 33 is not a positive multiple of the patch size 2"),
        (dict(base_window=15), "base_window 15 is not a positive multiple"),
    ],
)
def test_invalid_configurations_name_the_value(kwargs, message):
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    arguments = dict(canvas_size=32, base_window=16, layers=(2, 4))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MultiScaleCanvas(tower, **arguments)


def test_negative_layers_resolve_in_hf_numbering_and_bad_towers_are_rejected():
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    assert MultiScaleCanvas(tower, canvas_size=32, base_window=16, layers=(2, -2, -1)).layers == (2, 5, 6)
    with pytest.raises(TypeError, match="config.patch_size"):
        MultiScaleCanvas(nn.Linear(2, 2), canvas_size=32, base_window=16)
    wrong_tokens = PatchMeanTower(patch_size=2, depth=6, width=3)
    canvas = MultiScaleCanvas(wrong_tokens, canvas_size=32, base_window=16, layers=(1,))
    wrong_tokens.config.patch_size = 4  # the tower now emits 16 tokens per 16-px window instead of 64
    with pytest.raises(RuntimeError, match="expected 8² = 64"):
        canvas(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"pixels must be square, got \(1, 3, 32, 16\)"):
        canvas(torch.randn(1, 3, 32, 16))
    assert canvas.tower is wrong_tokens and list(canvas.state_dict()) == ["tower.mixing"]


@pytest.mark.slow
def test_real_tiny_clip_tower_paper_logic_on_tiny_sizes():
    from rsfuse.encoders.clip import CLIPVisionTower
    from rsfuse.encoders.clip_config import CLIPVisionConfig

    torch.manual_seed(0)
    tower = CLIPVisionTower(CLIPVisionConfig.tiny(), attention_backend="math")
    canvas = MultiScaleCanvas(tower, canvas_size=224, base_window=112, window_scales=(0.5, 1.0), layers=(2, 4, 6))
    assert canvas.windows_per_side == (7, 3) and canvas.window_token_sides == (4, 8) and canvas.canvas_tokens == 16
    pixels = torch.randn(1, 3, 112, 112)
    out = canvas(pixels)
    assert out.shape == (1, 2, 3, 16, 16, 64)
    reference = loop_canvas(
        tower, pixels, canvas_size=224, base_window=112, scales=(0.5, 1.0), layers=(2, 4, 6), blend="hann", layout="spatial"
    )
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[:, :, :, 0], torch.zeros_like(out[:, :, :, 0]))
    out[:, :, :, 1:-1, 1:-1].square().mean().backward()
    assert tower.embeddings.patch_embedding.weight.grad is not None
    assert tower.encoder.layers[5].mlp.fc2.weight.grad.abs().sum() > 0
    assert tower.post_layernorm.weight.grad is None
