"""Router (sample and token modes) and GatedInjector: exact formulas, invariances, key names, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from rsfuse.injection import GatedInjector, Router


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial LayerNorm affine parameters too, so the formulas are checked with every weight in play."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + (parameter == 1).float())


def _layer_norm(x, prefix, state):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def _norm_linear(x, prefix, state):
    return F.linear(_layer_norm(x, f"{prefix}.0", state), state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"])


def manual_sample_router(hidden, stacks, state):
    query = _norm_linear(hidden.mean(dim=1), "query", state)
    keys = _norm_linear(stacks.mean(dim=2), "key", state)
    scores = (query[:, None, :] * keys).sum(-1) / math.sqrt(hidden.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    return (weights[:, :, None, None] * stacks).sum(dim=1), weights


def manual_token_router(hidden, stacks, state):
    query = _norm_linear(hidden, "query", state)
    keys = _norm_linear(stacks, "key", state)
    scores = (query[:, None] * keys).sum(-1) / math.sqrt(hidden.shape[-1])  # [B, K, N]
    weights = torch.softmax(scores, dim=1)
    return (weights[..., None] * stacks).sum(dim=1), weights.transpose(1, 2)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.sampled_from([2, 4, 8]))


@given(shape=shapes, mode=st.sampled_from(["sample", "token"]), seed=st.integers(0, 2**16))
def test_router_matches_hand_written_formula(shape, mode, seed):
    batch, stacks_count, tokens, dim = shape
    router = Router(dim, mode=mode)
    _randomize(router, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(batch, tokens, dim, generator=generator)
    stacks = torch.randn(batch, stacks_count, tokens, dim, generator=generator)
    mixed, weights = router(hidden, stacks)
    manual = manual_sample_router if mode == "sample" else manual_token_router
    expected_mixed, expected_weights = manual(hidden, stacks, router.state_dict())
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, expected_mixed, rtol=1e-5, atol=1e-5)
    assert weights.shape == ((batch, stacks_count) if mode == "sample" else (batch, tokens, stacks_count))
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@given(shape=shapes, mode=st.sampled_from(["sample", "token"]), seed=st.integers(0, 2**16), data=st.data())
def test_permuting_stacks_permutes_weights_and_keeps_mixed(shape, mode, seed, data):
    batch, stacks_count, tokens, dim = shape
    router = Router(dim, mode=mode)
    _randomize(router, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(batch, tokens, dim, generator=generator)
    stacks = torch.randn(batch, stacks_count, tokens, dim, generator=generator)
    order = torch.tensor(data.draw(st.permutations(range(stacks_count))))
    mixed, weights = router(hidden, stacks)
    mixed_permuted, weights_permuted = router(hidden, stacks[:, order])
    torch.testing.assert_close(weights_permuted, weights[..., order], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed_permuted, mixed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sample", "token"])
def test_router_falls_back_to_uniform_weights_when_scores_are_not_finite(mode):
    router = Router(4, mode=mode)
    hidden = torch.randn(2, 3, 4)
    hidden[1, 0, 0] = float("nan")
    stacks = torch.randn(2, 5, 3, 4)
    mixed, weights = router(hidden, stacks)
    if mode == "sample":
        torch.testing.assert_close(weights[1], torch.full((5,), 0.2))
        torch.testing.assert_close(mixed[1], stacks[1].mean(dim=0))
        assert bool(torch.isfinite(weights[0]).all()) and not torch.allclose(weights[0], torch.full((5,), 0.2))
    else:
        torch.testing.assert_close(weights[1, 0], torch.full((5,), 0.2))
        torch.testing.assert_close(mixed[1, 0], stacks[1, :, 0].mean(dim=0))
        assert bool(torch.isfinite(mixed).all())


def test_router_state_dict_keys_and_errors():
    assert list(Router(4).state_dict()) == [
        "query.0.weight", "query.0.bias", "query.1.weight", "query.1.bias",
        "key.0.weight", "key.0.bias", "key.1.weight", "key.1.bias",
    ]  # fmt: skip
    router = Router(4)
    with pytest.raises(ValueError, match=r"stacks \(2, 5, 7, 4\) do not match hidden \(2, 3, 4\): expected \[2, K, 3, 4\]"):
        router(torch.randn(2, 3, 4), torch.randn(2, 5, 7, 4))
    with pytest.raises(ValueError, match=r"stacks \(2, 5, 3, 6\) do not match hidden"):
        router(torch.randn(2, 3, 4), torch.randn(2, 5, 3, 6))
    with pytest.raises(ValueError, match=r"hidden must be \[B, N, 4\], got \(2, 3, 6\)"):
        router(torch.randn(2, 3, 6), torch.randn(2, 5, 3, 6))
    with pytest.raises(ValueError, match="mode must be one of"):
        Router(4, mode="layer")
    with pytest.raises(ValueError, match="dim must be a positive int"):
        Router(0)


def manual_injector(hidden, detail, state, prefix=""):
    hidden_normed = _layer_norm(hidden, "hidden_norm", state)
    detail_normed = _layer_norm(detail, "detail_norm", state)
    gate = torch.sigmoid(
        F.linear(torch.cat([hidden_normed, detail_normed], -1), state["gate_proj.weight"], state["gate_proj.bias"])
    )
    projected = F.linear(detail_normed, state["detail_proj.weight"], state["detail_proj.bias"])
    return hidden + state["residual_scale"] * gate * projected


@given(shape=shapes, seed=st.integers(0, 2**16), with_router=st.booleans())
def test_injector_matches_hand_written_formula(shape, seed, with_router):
    batch, stacks_count, tokens, dim = shape
    injector = GatedInjector(dim, router=Router(dim) if with_router else None)
    _randomize(injector, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(batch, tokens, dim, generator=generator)
    state = injector.state_dict()
    if with_router:
        detail = torch.randn(batch, stacks_count, tokens, dim, generator=generator)
        router_state = {key.removeprefix("router."): value for key, value in state.items() if key.startswith("router.")}
        mixed, _ = manual_sample_router(hidden, detail, router_state)
    else:
        detail = mixed = torch.randn(batch, tokens, dim, generator=generator)
    torch.testing.assert_close(injector(hidden, detail), manual_injector(hidden, mixed, state), rtol=1e-5, atol=1e-5)


@given(shape=shapes, seed=st.integers(0, 2**16), with_router=st.booleans(), scale=st.floats(-1e4, 1e4))
def test_zero_residual_scale_returns_hidden_bit_for_bit(shape, seed, with_router, scale):
    batch, stacks_count, tokens, dim = shape
    injector = GatedInjector(dim, router=Router(dim) if with_router else None, residual_scale_init=0.0)
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, tokens, dim, generator=generator) * scale
    detail_shape = (batch, stacks_count, tokens, dim) if with_router else (batch, tokens, dim)
    detail = torch.randn(*detail_shape, generator=generator) * 100
    assert torch.equal(injector(hidden, detail), hidden)


def test_injector_keys_stats_and_scale_accessor():
    plain = GatedInjector(4)
    assert list(plain.state_dict()) == [
        "residual_scale",
        "hidden_norm.weight", "hidden_norm.bias", "detail_norm.weight", "detail_norm.bias",
        "detail_proj.weight", "detail_proj.bias", "gate_proj.weight", "gate_proj.bias",
    ]  # fmt: skip
    assert plain.state_dict()["gate_proj.weight"].shape == (4, 8)
    assert plain.residual_scale.shape == (1,) and plain.residual_scale.item() == 1.0
    routed = GatedInjector(4, router=Router(4))
    assert sorted(routed.state_dict()) == sorted(
        list(plain.state_dict()) + [f"router.{key}" for key in Router(4).state_dict()]
    )
    hidden, stacks = torch.randn(2, 3, 4), torch.randn(2, 6, 3, 4)
    injected, gate_mean, weights = routed.forward_with_stats(hidden, stacks)
    torch.testing.assert_close(injected, routed(hidden, stacks), rtol=0, atol=0)
    mixed = routed.router(hidden, stacks)[0]
    gate = torch.sigmoid(routed.gate_proj(torch.cat([routed.hidden_norm(hidden), routed.detail_norm(mixed)], dim=-1)))
    torch.testing.assert_close(gate_mean, gate.mean(dim=-1))
    assert weights.shape == (2, 6)
    torch.testing.assert_close(weights, routed.router(hidden, stacks)[1])
    checkpoint_vector = torch.tensor([0.25, -0.5, 0.75])
    routed.set_residual_scale(checkpoint_vector[1])
    assert routed.residual_scale.tolist() == [-0.5] and routed.residual_scale.requires_grad
    routed.set_residual_scale(2.0)
    assert routed.residual_scale.tolist() == [2.0]
    with pytest.raises(ValueError, match=r"expected one value, got shape \(3,\)"):
        routed.set_residual_scale(checkpoint_vector)


def test_injector_errors_name_shapes():
    with pytest.raises(ValueError, match=r"detail \(2, 6, 3, 4\) must match hidden \(2, 3, 4\); \[B, K, N, D\] stacks need a router"):
        GatedInjector(4)(torch.randn(2, 3, 4), torch.randn(2, 6, 3, 4))
    with pytest.raises(ValueError, match=r"with a router, detail must be stacks \[B, K, N, D\], got \(2, 3, 4\)"):
        GatedInjector(4, router=Router(4))(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"stacks \(2, 6, 5, 4\) do not match hidden \(2, 3, 4\)"):
        GatedInjector(4, router=Router(4))(torch.randn(2, 3, 4), torch.randn(2, 6, 5, 4))
    with pytest.raises(ValueError, match=r"hidden must be \[B, N, 4\], got \(2, 3, 5\)"):
        GatedInjector(4)(torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="router.dim 8 differs from the injector's dim 4"):
        GatedInjector(4, router=Router(8))
