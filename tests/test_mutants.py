"""Tests written to kill mutants that survived ``tools/mutation.py`` (docs/MUTATION.md): each one fails on the named
mutant and passes on the real code. Grouped by the module whose mutant they kill."""

import pytest
import torch
from factories.mfrsvlm import make_model
from test_canvas import PatchMeanTower

from rsfuse.encoders import MultiScaleCanvas
from rsfuse.encoders.stitch import stitch_windows
from rsfuse.encoders.windows import plan_window_grid, resize_to
from rsfuse.eval.matching import lenient_match
from rsfuse.fusion import MLPProjector
from rsfuse.injection.gated import GatedInjector
from rsfuse.injection.router import Router, check_stacks
from rsfuse.injection.visual import VisualContext
from rsfuse.llm import LlamaForCausalLM, StaticKVCache
from rsfuse.llm.config import LlamaConfig
from rsfuse.llm.layers import LlamaAttention


# --------------------------------------------------------------------------------------------- fusion/projector.py
def test_projector_rejects_wider_features_and_non_int_sizes():
    projector = MLPProjector(4, 6)
    with pytest.raises(ValueError, match=r"expected features \[..., 4\], got \(2, 5\)"):
        projector(torch.randn(2, 5))  # `!=` → `<` would let wider features reach the Linear
    with pytest.raises(ValueError, match="in_dim must be a positive int, got 2.5"):
        MLPProjector(2.5, 6)  # `or not isinstance` → `and not isinstance` would accept a float
    wide = MLPProjector(300, 2)  # above CPython's small-int cache: `!=` → `is not` would reject the right width
    assert wide(torch.randn(1, 300)).shape == (1, 2)


# --------------------------------------------------------------------------------------------- encoders/canvas.py
def test_canvas_size_zero_is_named():
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    with pytest.raises(ValueError, match="canvas_size 0 is not a positive multiple of the patch size 2"):
        MultiScaleCanvas(tower, canvas_size=0, base_window=16, layers=(2, 4))


def test_canvas_layer_minus_depth_plus_one_is_the_embeddings_and_defaults_are_the_papers():
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    # -(depth + 1) is hidden state 0; `index + depth + 1` → `index % depth + 1` would give 6
    assert MultiScaleCanvas(tower, canvas_size=32, base_window=16, layers=(-7, -1)).layers == (0, 6)
    paper = MultiScaleCanvas(PatchMeanTower(patch_size=14, depth=24, width=3))
    assert paper.layers == (8, 16, 24) and paper.canvas_size == 672


def test_canvas_base_window_zero_and_wide_pixels_are_named():
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    with pytest.raises(ValueError, match="base_window 0 is not a positive multiple of the patch size 2"):
        MultiScaleCanvas(tower, canvas_size=32, base_window=0, layers=(2, 4))
    canvas = MultiScaleCanvas(tower, canvas_size=32, base_window=16, layers=(1,))
    with pytest.raises(ValueError, match=r"pixels must be square, got \(1, 3, 16, 32\)"):
        canvas(torch.randn(1, 3, 16, 32))  # wider than tall: `!=` → `<` would let it through


# --------------------------------------------------------------------------------------------- encoders/stitch.py
def test_stitch_names_too_few_windows_and_takes_many():
    windows = torch.randn(1, 1, 8, 4, 4, 2)  # 8 windows where per_side=3 needs 9 (3 + 3 and 3 - 3 would not be 9)
    with pytest.raises(ValueError, match=r"got 8 windows, expected per_side² = 9"):
        stitch_windows(windows, per_side=3, stride=2, canvas_side=8, blend="hann")
    # 17² = 289 one-token windows at stride 1: above CPython's small-int cache, `!=` → `is not` would reject them
    many = torch.randn(1, 1, 289, 1, 1, 2)
    canvas = stitch_windows(many, per_side=17, stride=1, canvas_side=17, blend="mean")
    torch.testing.assert_close(canvas[0, 0].reshape(289, 2), many[0, 0, :, 0, 0])


# --------------------------------------------------------------------------------------------- encoders/windows.py
def test_stitch_names_a_window_wider_than_the_canvas():
    with pytest.raises(ValueError, match="do not tile"):
        stitch_windows(torch.zeros(1, 1, 1, 5, 5, 2), per_side=1, stride=1, canvas_side=4, blend="mean")


def test_resize_to_squares_an_image_whose_height_already_matches():
    images = torch.rand(1, 4, 4, 6, generator=torch.Generator().manual_seed(0))  # as many channels as the size
    expected = torch.nn.functional.interpolate(images, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_to(images, 4), expected, rtol=0, atol=1e-6)


def test_window_snap_error_names_the_larger_of_two_equally_near_divisors():
    # 112-px base window at patch 14: 8 tokens; scale 0.75 wants 6, equally near 4 and 8 -> 8 is named.
    with pytest.raises(ValueError, match="base token side 8 is 8 tokens = 112 px"):
        plan_window_grid(scale=0.75, canvas_size=224, base_window=112, patch_size=14)


def test_fractional_window_is_named_with_its_pixels():
    # 16 × 0.3 = 4.8 px; `> 1e-6` → `== 1e-6` would let it through to a later, different error
    with pytest.raises(ValueError, match=r"window scale 0.3 gives a window of 4.8\d* px \(base_window 16 × 0.3\)"):
        plan_window_grid(scale=0.3, canvas_size=32, base_window=16, patch_size=2)


def test_odd_token_side_stride_is_named():
    # 12 px / patch 2 = 6 tokens; scale 0.5 → 3 tokens (6 px): stride 1 token ≠ 3 px (`or` → `and` would accept it)
    with pytest.raises(ValueError, match="token side 3 gives a stride of 1 tokens"):
        plan_window_grid(scale=0.5, canvas_size=24, base_window=12, patch_size=2)


# --------------------------------------------------------------------------------------------- injection/gated.py
def test_injector_rejects_a_narrower_router():
    with pytest.raises(ValueError, match="router.dim 4 differs from the injector's dim 8"):
        GatedInjector(8, router=Router(4))  # `!=` → `>` would accept a router narrower than the injector


def test_injector_dim_checks_and_five_dimensional_detail_with_a_router():
    with pytest.raises(ValueError, match="dim must be a positive int, got 2.5"):
        GatedInjector(2.5)  # `or not isinstance` → `and not isinstance`
    one = GatedInjector(1)  # dim 1 is valid (`dim < 1` → `dim < 2` would reject it)
    assert one(torch.randn(2, 3, 1), torch.randn(2, 3, 1)).shape == (2, 3, 1)
    routed = GatedInjector(4, router=Router(4))
    with pytest.raises(ValueError, match=r"with a router, detail must be stacks \[B, K, N, D\], got \(2, 1, 3, 5, 4\)"):
        routed(torch.randn(2, 5, 4), torch.randn(2, 1, 3, 5, 4))  # `ndim != 4` → `ndim < 4`


# --------------------------------------------------------------------------------------------- injection/router.py
def test_router_rejects_stacks_with_a_smaller_batch():
    # called directly: with RSFUSE_TYPECHECK=1 the forward's shape annotations would reject it first
    with pytest.raises(ValueError, match=r"Router: stacks \(1, 3, 5, 4\) do not match hidden \(2, 5, 4\)"):
        check_stacks(torch.randn(2, 5, 4), torch.randn(1, 3, 5, 4), 4, "Router")  # `!=` → `>` on the batch


# --------------------------------------------------------------------------------------------- injection/visual.py
def test_visual_context_counts_the_slice_and_takes_many_positions():
    with pytest.raises(ValueError, match=r"covers 3 positions but the stacks hold 4 tokens"):
        VisualContext(stacks=torch.zeros(1, 4, 2), visual_slice=slice(2, 5))
    # 300 visual tokens: above CPython's small-int cache, so `!=` → `is not` would reject matching positions
    context = VisualContext(stacks=torch.zeros(1, 300, 2), positions=torch.arange(300)[None])
    assert context.positions.shape == (1, 300)


def test_router_of_width_one_is_valid():
    weights = Router(1)(torch.randn(2, 3, 1), torch.randn(2, 4, 3, 1))[1]  # `dim < 1` → `dim <= 1` would reject it
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2))


def test_router_names_a_four_dimensional_hidden():
    with pytest.raises(ValueError, match=r"Router: hidden must be \[B, N, 4\], got \(1, 2, 5, 4\)"):
        check_stacks(torch.randn(1, 2, 5, 4), torch.randn(1, 3, 5, 4), 4, "Router")  # `ndim != 3` → `ndim < 3`


# --------------------------------------------------------------------------------------------- eval/matching.py
def test_lenient_colour_rule_only_for_object_colour_and_token_subset_matches():
    # the base-colour rule is for "object color" only (`==` → `<=` would apply it to no question type, "" < "object")
    assert not lenient_match("green car", "light green")
    assert lenient_match("green car", "light green", "object color")
    # every answer token among the prediction's, in another order (`<=` → `>` would miss it)
    assert lenient_match("red and big", "big red")


# --------------------------------------------------------------------------------------------- llm/layers.py
def test_attention_options_are_keyword_only():
    attention = LlamaAttention(LlamaConfig.tiny(), layer_index=0)
    hidden = torch.randn(1, 3, LlamaConfig.tiny().hidden_size)
    with pytest.raises(TypeError, match="positional argument"):  # `*` → `/` in the signature would accept them positionally
        attention(hidden, (hidden, hidden), None)


# --------------------------------------------------------------------------------------------- llm/cache.py
def test_static_cache_chunk_and_steps_equal_the_full_forward():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.tiny()).eval()
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    cache = StaticKVCache.for_model(model.config, batch_size=2, max_length=12, dtype=torch.float32, device="cpu")
    real = torch.zeros(2, 12, dtype=torch.bool)

    def call(start, stop):
        real[:, start:stop] = True  # the caller owns the key mask; the cache is storage
        return model(ids[:, start:stop], attention_mask=real, past_key_values=cache,
                     cache_position=torch.arange(start, stop)[None]).logits

    with torch.no_grad():
        full = model(ids).logits
        # a multi-token call after the first: its causal bound is `column <= slot` (`>=` would invert it)
        pieces = [call(0, 4), call(4, 7), *(call(i, i + 1) for i in range(7, 9))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-5)


def test_static_cache_attends_only_over_the_columns_the_mask_covers():
    """Stale keys in a reused row (slots 3:) are never read: the mask's columns are the ones attended."""
    model = LlamaForCausalLM(LlamaConfig.tiny()).eval()
    ids = torch.randint(0, 256, (1, 3), generator=torch.Generator().manual_seed(5))
    cache = StaticKVCache.for_model(model.config, batch_size=1, max_length=6, dtype=torch.float32, device="cpu")
    for buffer in (*cache.keys, *cache.values):
        buffer.normal_()
    mask = torch.tensor([[True, True, True, False, False, False]])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, past_key_values=cache, cache_position=torch.arange(3)[None]).logits
    torch.testing.assert_close(logits, model(ids).logits, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- generation/generate.py
def test_compiled_session_is_reused_for_the_same_shape_only_and_dropped_by_clear():
    model = make_model()
    sessions = model.compiled_sessions
    first = sessions.get(model, batch=1, max_length=128, pad=0)
    # same key: the kept session comes back (a new one would recompile)
    assert sessions.get(model, batch=1, max_length=128, pad=0) is first
    assert sessions.get(model, batch=2, max_length=128, pad=0) is not first and len(sessions) == 2
    sessions.clear()
    assert len(sessions) == 0 and sessions.get(model, batch=1, max_length=128, pad=0) is not first
def test_generate_stops_decoding_once_every_row_ended(monkeypatch):
    """EOS is read every ``sync_every`` steps and the loop stops there: with every row ending at its first token,
    ``generate`` runs fewer than ``sync_every`` decode steps, not ``max_new_tokens``."""
    from rsfuse.generation import GenerationSession

    model = make_model()
    ids = torch.randint(3, 200, (2, 5))
    pixels = torch.randn(2, 3, model.config.input_size, model.config.input_size)
    first = model.generate(pixels, ids, max_new_tokens=1, eos_token_id=[])
    steps = []
    original = GenerationSession.step
    monkeypatch.setattr(GenerationSession, "step", lambda self: (steps.append(1), original(self))[1])
    out = model.generate(pixels, ids, max_new_tokens=20, eos_token_id=sorted(set(first[:, 0].tolist())))
    # Steps 1..7 decode; at step 8 (sync_every = 8) the poll sees every row done and the loop ends: 7 decode steps.
    assert torch.equal(out, first) and len(steps) == 7


def test_compiled_generate_sizes_its_cache_in_buckets_of_128(monkeypatch):
    """``compile=True`` rounds prompt + visual + new tokens up to a multiple of 128 positions (a fixed cache shape
    reused across prompt lengths); checked on the length handed to the session, without compiling."""
    from rsfuse.generation import CompiledSessions, GenerationSession

    model = make_model()
    lengths = []

    def spy(self, model, *, batch, max_length, pad):
        lengths.append(max_length)
        return GenerationSession(model, max_batch=batch, max_length=max_length, pad_token_id=pad)

    monkeypatch.setattr(CompiledSessions, "get", spy)
    pixels = torch.randn(1, 3, model.config.input_size, model.config.input_size)
    visual = model.config.num_visual_tokens
    for new, expected in ((128 - visual - 9, 128), (129 - visual - 9, 256)):
        model.generate(pixels, torch.randint(3, 200, (1, 9)), max_new_tokens=new, eos_token_id=[], compile=True)
        assert lengths[-1] == min(expected, model.config.llm.max_position_embeddings)
    assert lengths == [128, 256]


def test_generate_without_cache_stops_at_the_models_own_eos():
    """``use_cache=False`` with no ``eos_token_id`` stops at the model config's EOS, like the cached path."""
    model = make_model()
    pixels = torch.randn(2, 3, model.config.input_size, model.config.input_size)
    ids = torch.randint(3, 200, (2, 7))
    probe = model.generate(pixels, ids, max_new_tokens=1, eos_token_id=[])
    model.config.llm.eos_token_id = int(probe[0, 0])  # row 0 ends at its first token (a fresh model: no restore)
    cached = model.generate(pixels, ids, max_new_tokens=5)
    uncached = model.generate(pixels, ids, max_new_tokens=5, use_cache=False)
    assert torch.equal(cached, uncached) and cached[0, 0] == probe[0, 0]


def test_a_cached_call_leaves_no_query_row_without_a_key():
    """``cache_attention_mask`` lets every token see itself, so no attention row is empty whatever the backend
    (kernels differ on empty rows: NaN or 0) and the empty-row fix-up can be skipped; real tokens see exactly the
    real columns up to their slot."""
    from rsfuse.llm.model import cache_attention_mask

    real = torch.tensor([[False, False, True, True, False, False], [True, True, True, True, False, False]])
    slots = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    built = cache_attention_mask(real, slots, width=6, new_tokens=4)
    mask = built.mask[:, 0]  # [B, M, W]
    assert built.all_rows_attend and mask.any(dim=-1).all()
    columns = torch.arange(6)
    for row in range(2):
        for query in range(4):
            slot = int(slots[row, query])
            expected = (columns <= slot) & (real[row] | (columns == slot))
            assert torch.equal(mask[row, query], expected)
    assert mask[0, 0].tolist() == [True, False, False, False, False, False]  # a padding query sees itself only
