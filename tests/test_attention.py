"""rsfuse.ops.attention: SDPA against the plain math reference on drawn shapes and masks, and backend selection."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rsfuse.ops import attention, xformers_available


def explicit_reference(q, k, v, allowed):
    """Softmax attention written out per head with an explicit [B, H, M, N] boolean mask (no shared code)."""
    batch, queries, heads, dim = q.shape
    groups = heads // k.shape[2]
    out = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    for h in range(heads):
        qh = q[:, :, h].double()
        kh = k[:, :, h // groups].double()
        vh = v[:, :, h // groups].double()
        scores = qh @ kh.transpose(1, 2) / math.sqrt(dim)
        scores = scores.masked_fill(~allowed[:, h], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        out[:, :, h] = probs @ vh
    return out


shapes = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 3),
        "queries": st.integers(1, 9),
        "extra_keys": st.integers(0, 6),
        "kv_heads": st.integers(1, 3),
        "groups": st.integers(1, 3),
        "dim": st.sampled_from([4, 8, 16]),
        "causal": st.booleans(),
        "mask_kind": st.sampled_from(["none", "bool", "additive", "padding"]),
        "seed": st.integers(0, 2**16),
    }
)


@given(shapes)
def test_sdpa_and_math_match_an_explicit_reference(case):
    generator = torch.Generator().manual_seed(case["seed"])
    batch, queries, dim = case["batch"], case["queries"], case["dim"]
    keys = queries + case["extra_keys"]
    heads = case["kv_heads"] * case["groups"]
    q = torch.randn(batch, queries, heads, dim, generator=generator)
    k = torch.randn(batch, keys, case["kv_heads"], dim, generator=generator)
    v = torch.randn(batch, keys, case["kv_heads"], dim, generator=generator)

    allowed = torch.ones(batch, heads, queries, keys, dtype=torch.bool)
    mask = None
    if case["mask_kind"] == "bool":
        mask = torch.rand(batch, 1, queries, keys, generator=generator) > 0.3
        allowed = allowed & mask
    elif case["mask_kind"] == "padding":
        lengths = torch.randint(1, keys + 1, (batch,), generator=generator)
        mask = (torch.arange(keys)[None, :] >= keys - lengths[:, None])[:, None, None, :]
        allowed = allowed & mask
    elif case["mask_kind"] == "additive":
        blocked = torch.rand(batch, heads, queries, keys, generator=generator) < 0.3
        mask = torch.zeros(batch, heads, queries, keys).masked_fill(blocked, float("-inf"))
        allowed = allowed & ~blocked
    if case["causal"]:
        rows = torch.arange(queries)[:, None]
        allowed = allowed & (torch.arange(keys)[None, :] <= rows + keys - queries)

    expected = explicit_reference(q, k, v, allowed)
    if case["mask_kind"] == "additive":
        # A row with every score at -inf has no defined softmax for an additive mask; compare the defined rows only.
        defined = allowed.any(-1).permute(0, 2, 1)[..., None]
    else:
        defined = torch.ones(batch, queries, heads, 1, dtype=torch.bool)
    for backend in ("math", "sdpa"):
        got = attention(q, k, v, causal=case["causal"], mask=mask, backend=backend).double()
        assert got.shape == (batch, queries, heads, dim)
        torch.testing.assert_close(
            torch.where(defined, got, 0.0), torch.where(defined, expected, 0.0), atol=2e-5, rtol=1e-4
        )


def test_causal_with_a_cache_is_bottom_right_aligned():
    q = torch.randn(1, 2, 2, 8)
    k = torch.randn(1, 5, 2, 8)
    v = torch.randn(1, 5, 2, 8)
    full_q = torch.cat([torch.randn(1, 3, 2, 8), q], dim=1)
    full = attention(full_q, k, v, causal=True, backend="math")
    cached = attention(q, k, v, causal=True, backend="sdpa")
    torch.testing.assert_close(cached, full[:, 3:], atol=1e-6, rtol=1e-5)


def test_fully_masked_rows_return_zeros_in_every_backend():
    q, k, v = torch.randn(1, 3, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    mask[..., 1, :] = False
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, mask=mask, backend=backend)
        assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
        assert out[:, 0].abs().sum() > 0


def test_auto_falls_back_to_sdpa_where_xformers_cannot_run():
    q = torch.randn(2, 5, 4, 8)
    assert not xformers_available(q.device, q.dtype)  # no xformers CPU kernels exist
    torch.testing.assert_close(attention(q, q, q, backend="auto"), attention(q, q, q, backend="sdpa"))


def test_explicit_xformers_where_it_cannot_run_is_a_clear_error():
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(RuntimeError, match="xformers"):
        attention(q, q, q, backend="xformers")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "flash"}, "backend must be one of"),
        ({"mask": torch.ones(2, 2, dtype=torch.bool)}, "4 dims"),
        ({"mask": torch.ones(1, 1, 3, 7, dtype=torch.bool)}, "does not broadcast"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    q = torch.randn(1, 3, 2, 8)
    with pytest.raises(ValueError, match=message):
        attention(q, q, q, **kwargs)


def test_heads_must_divide():
    q = torch.randn(1, 3, 3, 8)
    k = torch.randn(1, 3, 2, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, k, k)
