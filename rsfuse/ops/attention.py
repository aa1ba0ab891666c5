"""Scaled dot-product attention with interchangeable backends, in ``[B, M, H, D]`` layout.

Backends:

* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (the default everywhere).
* ``"xformers"``: ``xformers.ops.memory_efficient_attention``; asking for it where it cannot run raises ``RuntimeError``.
* ``"math"``: a plain softmax(QKᵀ/√d)V reference in float32.
* ``"auto"``: xformers when it imports and a one-time probe call succeeds on the tensors' device and dtype, else SDPA.

Conventions shared by all backends:

* ``k``/``v`` may have fewer heads than ``q`` (grouped-query attention) when ``H % Hk == 0``.
* ``mask`` broadcasts to ``[B, H, M, N]``; a boolean mask is True where a query may attend, a float mask is added to
  the scores.
* ``causal=True`` with ``M != N`` aligns the triangle to the bottom right: query ``i`` sees keys ``j <= i + N - M``
  (the layout of a KV cache holding ``N - M`` earlier positions).
* A query row whose boolean mask allows no key returns zeros.
"""

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.options import ATTENTION_BACKENDS, check_option

__all__ = ["attention", "attention_weights", "xformers_available", "BACKENDS"]

BACKENDS = ATTENTION_BACKENDS  # defined in rsfuse.options


def _causal_mask(queries: int, keys: int, device: torch.device) -> Tensor:
    """Bool ``[M, N]``: query i may see key j when ``j <= i + keys - queries``."""
    rows = torch.arange(queries, device=device)[:, None]
    cols = torch.arange(keys, device=device)[None, :]
    return cols <= rows + (keys - queries)


def _combined_mask(mask: Tensor | None, causal: bool, queries: int, keys: int, device: torch.device) -> Tensor | None:
    """Merge ``mask`` and the causal triangle into one mask broadcastable to ``[B, H, M, N]`` (or None)."""
    if not causal:
        return mask
    triangle = _causal_mask(queries, keys, device)
    if mask is None:
        return triangle
    if mask.dtype == torch.bool:
        return mask & triangle
    return mask.masked_fill(~triangle, float("-inf"))


def _empty_rows(mask: Tensor | None) -> Tensor | None:
    """Bool ``[B|1, H|1, M, 1]``: rows of a boolean mask with no allowed key."""
    if mask is None or mask.dtype != torch.bool:
        return None
    return ~mask.any(dim=-1, keepdim=True)


def _check(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects [B, M, H, D] tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head size")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"attention: {q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
    if mask is not None:
        if mask.ndim != 4:
            raise ValueError(f"attention: mask must broadcast to [B, H, M, N] with 4 dims, got {tuple(mask.shape)}")
        expected = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        if any(size not in (1, want) for size, want in zip(mask.shape, expected)):
            raise ValueError(
                f"attention: mask {tuple(mask.shape)} does not broadcast to [B, H, M, N] = "
                f"{expected}"
            )


def _math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    groups = q.shape[2] // k.shape[2]
    k = repeat(k, "b n h d -> b n (h g) d", g=groups)
    v = repeat(v, "b n h d -> b n (h g) d", g=groups)
    scores = torch.einsum("bmhd,bnhd->bhmn", q.float(), k.float()) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhmn,bnhd->bmhd", probs, v.float()).to(q.dtype)


def attention_weights(
    q: Float[Tensor, "batch queries heads dim"],
    k: Float[Tensor, "batch keys kv_heads dim"],
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
) -> Float[Tensor, "batch heads queries keys"]:
    """The softmax weights ``[B, H, M, N]`` (float32) that ``attention`` applies, with the same mask and causal
    conventions (a row with no allowed key is all zeros): for analysis, not speed."""
    _check(q, k, k, mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keys = repeat(k, "b n h d -> b n (h g) d", g=q.shape[2] // k.shape[2])
    scores = torch.einsum("bmhd,bnhd->bhmn", q.float(), keys.float()) * scale
    merged = _combined_mask(mask, causal, q.shape[1], k.shape[1], q.device)
    if merged is not None:
        scores = scores.masked_fill(~merged, float("-inf")) if merged.dtype == torch.bool else scores + merged.float()
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # "b m h d -> b h m d" (hot path: native view)
    groups = q.shape[1] // k.shape[1]
    use_builtin_causal = causal and mask is None and q.shape[2] == k.shape[2]
    if not use_builtin_causal:
        mask = _combined_mask(mask, causal, q.shape[2], k.shape[2], q.device)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=use_builtin_causal, scale=scale, enable_gqa=groups > 1
    )
    return out.transpose(1, 2)  # "b h m d -> b m h d"


@functools.cache
def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: PLC0415  (optional dependency)
    except Exception:  # ImportError, or a binary built for another torch
        return None
    return xops


@functools.cache
def _xformers_probe(device_type: str, device_index: int | None, dtype: torch.dtype) -> bool:
    """One tiny call per (device, dtype): True when xformers' kernel actually runs there."""
    xops = _xformers_ops()
    if xops is None:
        return False
    try:
        device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
        probe = torch.zeros(1, 8, 1, 8, device=device, dtype=dtype)
        xops.memory_efficient_attention(probe, probe, probe)
        return True
    except Exception:
        return False


@torch._dynamo.assume_constant_result  # probed once, outside any compiled graph
def xformers_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the xformers backend imports and runs on ``device`` with ``dtype``."""
    return _xformers_probe(device.type, device.index, dtype)


def _xformers(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    xops = _xformers_ops()
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k = repeat(k, "b n h d -> b n (h g) d", g=groups)
        v = repeat(v, "b n h d -> b n (h g) d", g=groups)
    batch, queries, heads, _ = q.shape
    keys = k.shape[1]
    if mask is None and causal:
        bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    else:
        merged = _combined_mask(mask, causal, queries, keys, q.device)
        if merged is None:
            bias = None
        else:
            if merged.dtype == torch.bool:
                merged = torch.zeros(merged.shape, dtype=q.dtype, device=q.device).masked_fill(~merged, float("-inf"))
            # xformers wants a bias whose last-dim storage is 8-aligned: allocate padded, then view the valid part.
            padded = torch.empty(batch, heads, queries, (keys + 7) // 8 * 8, dtype=q.dtype, device=q.device)
            bias = padded[..., :keys]
            bias.copy_(merged.to(q.dtype).expand(batch, heads, queries, keys))
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)


@typecheck
def attention(
    q: Float[Tensor, "batch queries heads dim"],
    k: Float[Tensor, "batch keys kv_heads dim"],
    v: Float[Tensor, "batch keys kv_heads dim"],
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
    all_rows_attend: bool = False,
) -> Float[Tensor, "batch queries heads dim"]:
    """Attention of ``q`` over ``k``/``v``; see the module docstring for masks, causality and backends.

    ``all_rows_attend=True``: the caller guarantees that every query row's mask allows some key (e.g. a decoding
    step, which always sees itself), so the zero-fill of empty rows is skipped."""
    check_option(backend, ATTENTION_BACKENDS, "attention backend")
    _check(q, k, v, mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if backend == "auto":
        backend = "xformers" if xformers_available(q.device, q.dtype) else "sdpa"
    elif backend == "xformers" and not xformers_available(q.device, q.dtype):
        raise RuntimeError(
            f"attention backend 'xformers' was requested but its kernel does not run on {q.device} with {q.dtype} "
            "(not installed, built for another torch, or no kernel for this device); use backend='sdpa'"
        )
    if backend == "math":
        return _math(q, k, v, _combined_mask(mask, causal, q.shape[1], k.shape[1], q.device), scale)
    empty = None
    if mask is not None and not all_rows_attend:
        empty = _empty_rows(_combined_mask(mask, causal, q.shape[1], k.shape[1], q.device))
    out = _sdpa(q, k, v, mask, causal, scale) if backend == "sdpa" else _xformers(q, k, v, mask, causal, scale)
    if empty is not None:
        out = out.masked_fill(rearrange(empty, "b h m one -> b m h one"), 0.0)
    return out
