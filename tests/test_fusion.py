"""DetailStackSampler phase order and MLPProjector layout/formula."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from rsfuse.fusion import DetailStackSampler, MLPProjector


@given(
    batch=st.integers(1, 3),
    scales=st.integers(1, 3),
    layers=st.integers(1, 3),
    factor=st.integers(1, 3),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dim=st.integers(1, 6),
)
def test_sampler_order_is_scale_layer_phase_r_major(batch, scales, layers, factor, grid, dim):
    height, width = grid[0] * factor, grid[1] * factor
    canvas = torch.randn(batch, scales, layers, height, width, dim)
    sampler = DetailStackSampler(factor=factor)
    stacks = sampler(canvas)
    assert stacks.shape == (batch, scales * layers * factor**2, grid[0] * grid[1], dim)
    assert sampler.num_stacks(scales, layers) == stacks.shape[1]
    expected = [
        canvas[:, s, l, r::factor, c::factor].reshape(batch, -1, dim)
        for s in range(scales)
        for l in range(layers)
        for r in range(factor)
        for c in range(factor)
    ]
    assert torch.equal(stacks, torch.stack(expected, dim=1))


@given(scales=st.integers(1, 3), layers=st.integers(1, 3), factor=st.integers(1, 3))
def test_stack_order_names_what_each_stack_holds(scales, layers, factor):
    # Tag every canvas cell with its (scale, layer, row phase, column phase); each stack must hold one tag only.
    scale_values, layer_values = [0.5 ** s for s in range(scales)], [3 * l + 2 for l in range(layers)]
    side = 2 * factor
    rows, cols = torch.arange(side) % factor, torch.arange(side) % factor
    canvas = torch.zeros(1, scales, layers, side, side, 4)
    for s in range(scales):
        for l in range(layers):
            canvas[0, s, l, :, :, 0] = scale_values[s]
            canvas[0, s, l, :, :, 1] = layer_values[l]
            canvas[0, s, l, :, :, 2] = rows[:, None].float()
            canvas[0, s, l, :, :, 3] = cols[None, :].float()
    sampler = DetailStackSampler(factor=factor)
    stacks = sampler(canvas)[0]
    order = sampler.stack_order(scale_values, layer_values)
    assert len(order) == stacks.shape[0] == sampler.num_stacks(scales, layers)
    for k, tag in enumerate(order):
        assert torch.equal(stacks[k], torch.tensor(tag, dtype=torch.float).expand_as(stacks[k]))


def test_sampler_paper_shape_and_errors():
    stacks = DetailStackSampler()(torch.zeros(1, 2, 3, 48, 48, 8))
    assert stacks.shape == (1, 24, 576, 8)
    with pytest.raises(ValueError, match=r"7×8 grid not divisible by factor 2"):
        DetailStackSampler(factor=2)(torch.zeros(1, 1, 1, 7, 8, 4))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="factor must be a positive int"):
            DetailStackSampler(factor=bad)


@given(in_dim=st.integers(1, 8), out_dim=st.integers(1, 8), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_projector_is_linear_gelu_linear_with_llava_keys(in_dim, out_dim, lead):
    projector = MLPProjector(in_dim, out_dim)
    assert list(projector.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    state = projector.state_dict()
    assert state["0.weight"].shape == (out_dim, in_dim) and state["2.weight"].shape == (out_dim, out_dim)
    features = torch.randn(*lead, in_dim)
    expected = F.linear(F.gelu(F.linear(features, state["0.weight"], state["0.bias"])), state["2.weight"], state["2.bias"])
    torch.testing.assert_close(projector(features), expected)


def test_projector_errors_name_the_value():
    with pytest.raises(ValueError, match="expected features \\[..., 4\\], got \\(2, 3\\)"):
        MLPProjector(4, 8)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="in_dim must be a positive int, got 0"):
        MLPProjector(0, 8)
    with pytest.raises(ValueError, match="out_dim must be a positive int"):
        MLPProjector(4, -2)
