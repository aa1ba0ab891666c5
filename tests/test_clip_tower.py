"""CLIPVisionConfig and CLIPVisionTower: HF parity, hidden-state numbering, early stop, position interpolation, errors."""

import dataclasses

import pytest
import torch
import transformers
from factories.clip import hf_vision_config, tiny_hf_clip_vision
from hypothesis import given, settings
from hypothesis import strategies as st

from rsfuse.checkpoints import clip_vision_shapes
from rsfuse.encoders import CLIPVisionConfig, CLIPVisionTower

TINY = CLIPVisionConfig.tiny()
LAYERS = TINY.num_hidden_layers
ATOL = 1e-5


def _hf_keys_unprefixed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = "vision_model."
    return {
        key[len(prefix) :] if key.startswith(prefix) else key: value
        for key, value in model.state_dict().items()
        if not key.endswith("position_ids")
    }


@pytest.fixture(scope="module")
def hf_model() -> transformers.CLIPVisionModel:
    return tiny_hf_clip_vision(seed=0)


@pytest.fixture(scope="module")
def tower(hf_model) -> CLIPVisionTower:
    model = CLIPVisionTower(TINY, attention_backend="sdpa").eval()
    model.load_state_dict(_hf_keys_unprefixed(hf_model), strict=True)
    return model


def _pixels(batch: int = 2, height: int = 112, width: int = 112, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ----- config --------------------------------------------------------------------------------------------------------
def test_presets_have_the_documented_shapes():
    large = CLIPVisionConfig.vit_l14_336()
    assert (large.image_size, large.patch_size, large.hidden_size, large.intermediate_size) == (336, 14, 1024, 4096)
    assert (large.num_hidden_layers, large.num_attention_heads, large.hidden_act) == (24, 16, "quick_gelu")
    assert large.grid_size == 24 and large.num_positions == 577
    assert (TINY.image_size, TINY.patch_size, TINY.hidden_size, TINY.intermediate_size) == (112, 14, 64, 256)
    assert (TINY.num_hidden_layers, TINY.num_attention_heads, TINY.grid_size) == (6, 4, 8)


def test_defaults_equal_transformers_defaults():
    """HF save_pretrained may omit default fields, so our defaults must be HF's."""
    ours = CLIPVisionConfig()
    theirs = transformers.CLIPVisionConfig()
    for field in dataclasses.fields(CLIPVisionConfig):
        assert getattr(ours, field.name) == getattr(theirs, field.name), field.name


def test_dict_round_trip_and_hf_dicts():
    assert CLIPVisionConfig.from_dict(TINY.to_dict()) == TINY
    vision_only = hf_vision_config(TINY).to_dict()
    assert CLIPVisionConfig.from_dict(vision_only) == TINY
    full = {"model_type": "clip", "projection_dim": 16, "text_config": {"hidden_size": 32}, "vision_config": vision_only}
    assert CLIPVisionConfig.from_dict(full) == TINY
    assert CLIPVisionConfig.from_dict({**TINY.to_dict(), "some_future_key": [1, 2]}) == TINY


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 0),
        ("patch_size", "14"),
        ("hidden_size", 63),  # not divisible by 4 heads
        ("image_size", 113),  # not a multiple of the patch
        ("num_hidden_layers", True),
        ("hidden_act", "swish"),
        ("layer_norm_eps", -1.0),
        ("layer_norm_eps", float("inf")),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    data = {**TINY.to_dict(), field: value}
    with pytest.raises(ValueError, match=field):
        CLIPVisionConfig.from_dict(data)


def test_full_clip_dict_without_vision_config_is_refused():
    with pytest.raises(ValueError, match="vision_config"):
        CLIPVisionConfig.from_dict({"model_type": "clip"})
    with pytest.raises(ValueError, match="vision_config"):
        CLIPVisionConfig.from_dict({"vision_config": None})


# ----- structure -----------------------------------------------------------------------------------------------------
def test_state_dict_keys_and_shapes_are_hf_vision_keys(hf_model):
    tower = CLIPVisionTower(TINY)
    ours = {key: tuple(value.shape) for key, value in tower.state_dict().items()}
    assert ours == clip_vision_shapes(TINY)
    assert ours == {key: tuple(value.shape) for key, value in _hf_keys_unprefixed(hf_model).items()}
    assert tower.num_layers == LAYERS


# ----- parity with transformers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_all_hidden_states_match_transformers(hf_model, tower, backend):
    model = CLIPVisionTower(TINY, attention_backend=backend).eval()
    model.load_state_dict(tower.state_dict())
    pixels = _pixels()
    with torch.no_grad():
        reference = hf_model(pixel_values=pixels, output_hidden_states=True)
        ours = model.forward_intermediates(pixels, list(range(LAYERS + 1)))
        last = model(pixels)
    assert len(reference.hidden_states) == LAYERS + 1
    for index, (theirs, mine) in enumerate(zip(reference.hidden_states, ours)):
        assert mine.shape == (2, TINY.num_patches, TINY.hidden_size)
        torch.testing.assert_close(mine, theirs[:, 1:], atol=ATOL, rtol=0, msg=f"hidden state {index}")
    torch.testing.assert_close(last, reference.last_hidden_state, atol=ATOL, rtol=0)


def test_plain_gelu_tower_matches_transformers():
    config = dataclasses.replace(TINY, hidden_act="gelu", num_hidden_layers=2)
    reference = tiny_hf_clip_vision(seed=3, config=config)
    model = CLIPVisionTower(config).eval()
    model.load_state_dict(_hf_keys_unprefixed(reference))
    pixels = _pixels()
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
        (mine,) = model.forward_intermediates(pixels, [-1])
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


# ----- numbering and early stop -------------------------------------------------------------------------------------
def test_negative_indices_follow_hf_numbering(tower):
    pixels = _pixels(batch=1)
    with torch.no_grad():
        everything = tower.forward_intermediates(pixels, list(range(LAYERS + 1)))
        picked = tower.forward_intermediates(pixels, [-2, -1, -(LAYERS + 1), 3, 3])
    expected = [everything[LAYERS - 1], everything[LAYERS], everything[0], everything[3], everything[3]]
    for mine, reference in zip(picked, expected):
        assert torch.equal(mine, reference)


def test_stop_early_skips_blocks_and_changes_nothing(tower):
    calls = []
    handles = [block.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, block in enumerate(tower.encoder.layers)]
    try:
        pixels = _pixels(batch=1)
        with torch.no_grad():
            early = tower.forward_intermediates(pixels, [2, 0], stop_early=True)
            assert calls == [0, 1]
            calls.clear()
            full = tower.forward_intermediates(pixels, [2, 0], stop_early=False)
            assert calls == list(range(LAYERS))
    finally:
        for handle in handles:
            handle.remove()
    for a, b in zip(early, full):
        assert torch.equal(a, b)


@pytest.mark.parametrize("index", [LAYERS + 1, -(LAYERS + 2), 100])
def test_out_of_range_index_names_the_value(tower, index):
    with pytest.raises(IndexError, match=str(index)):
        tower.forward_intermediates(_pixels(batch=1), [1, index])


def test_bad_index_containers_are_refused():
    tower = CLIPVisionTower(TINY)
    with pytest.raises(TypeError, match="sequence"):
        tower.normalize_indices(3)
    with pytest.raises(ValueError, match="at least one"):
        tower.normalize_indices([])
    with pytest.raises(TypeError, match="1.5"):
        tower.normalize_indices([1.5])


# ----- position-embedding interpolation -----------------------------------------------------------------------------
def test_native_size_uses_the_table_unchanged(tower):
    assert tower.embeddings.positions_for_grid(8, 8) is tower.embeddings.position_embedding.weight


@pytest.mark.parametrize(("height", "width"), [(140, 140), (84, 126), (56, 168)])
def test_other_sizes_interpolate_like_transformers(hf_model, tower, height, width):
    pixels = _pixels(batch=2, height=height, width=width)
    with torch.no_grad():
        reference = hf_model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        ours = tower.forward_intermediates(pixels, [0, 3, LAYERS])
    tokens = (height // 14) * (width // 14)
    for mine, index in zip(ours, [0, 3, LAYERS]):
        assert mine.shape == (2, tokens, TINY.hidden_size)
        torch.testing.assert_close(mine, reference.hidden_states[index][:, 1:], atol=ATOL, rtol=0)


def test_interpolation_cache_follows_weight_updates():
    tower = CLIPVisionTower(TINY).eval()
    pixels = _pixels(batch=1, height=140, width=140)
    with torch.no_grad():
        before = tower.forward_intermediates(pixels, [0])[0]
        assert torch.equal(before, tower.forward_intermediates(pixels, [0])[0])
        tower.embeddings.position_embedding.weight.add_(1.0)
        after = tower.forward_intermediates(pixels, [0])[0]
    assert not torch.allclose(before, after)


def test_interpolated_positions_receive_gradients():
    tower = CLIPVisionTower(TINY)
    (out,) = tower.forward_intermediates(_pixels(batch=1, height=140, width=140), [1])
    out.sum().backward()
    assert tower.embeddings.position_embedding.weight.grad.abs().sum() > 0


def test_size_not_multiple_of_patch_raises(tower):
    with pytest.raises(ValueError, match="113"):
        tower.forward_intermediates(_pixels(batch=1, height=113, width=112), [1])


def test_wrong_channel_count_raises(tower):
    with pytest.raises(ValueError, match="pixels"):
        tower.forward_intermediates(torch.randn(1, 4, 112, 112), [1])


# ----- batching, dtype, checkpointing ---------------------------------------------------------------------------------
@settings(max_examples=6)
@given(batch=st.integers(min_value=1, max_value=3), seed=st.integers(min_value=0, max_value=1000))
def test_each_sample_is_independent_of_the_batch(tower, batch, seed):
    pixels = _pixels(batch=batch, seed=seed)
    with torch.no_grad():
        batched = tower.forward_intermediates(pixels, [4, -1])
        first_alone = tower.forward_intermediates(pixels[:1], [4, -1])
    for together, alone in zip(batched, first_alone):
        assert together.shape == (batch, TINY.num_patches, TINY.hidden_size)
        torch.testing.assert_close(together[:1], alone, atol=ATOL, rtol=0)


def test_bfloat16_tower_accepts_float32_pixels(tower):
    low = CLIPVisionTower(TINY).eval()
    low.load_state_dict(tower.state_dict())
    low = low.to(torch.bfloat16)
    with torch.no_grad():
        (out,) = low.forward_intermediates(_pixels(batch=1), [-1])
        (reference,) = tower.forward_intermediates(_pixels(batch=1), [-1])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.15, rtol=0.05)


def test_gradient_checkpointing_gives_the_same_gradients(tower):
    pixels = _pixels(batch=1)
    grads = []
    for checkpointing in (False, True):
        model = CLIPVisionTower(TINY, gradient_checkpointing=checkpointing).train()
        model.load_state_dict(tower.state_dict())
        calls = []
        model.encoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
        (out,) = model.forward_intermediates(pixels, [LAYERS - 1])
        assert len(calls) == 1
        out.square().mean().backward()
        # Checkpointing is seen to happen: the block body runs a second time, during backward.
        assert len(calls) == (2 if checkpointing else 1), (checkpointing, calls)
        grads.append(model.encoder.layers[0].mlp.fc1.weight.grad)
        with torch.no_grad():
            model.forward_intermediates(pixels, [LAYERS - 1])
        assert len(calls) == (3 if checkpointing else 2)  # without gradients nothing is recomputed
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="attention_backend"):
        CLIPVisionTower(TINY, attention_backend="flash")
    with pytest.raises(TypeError, match="CLIPVisionConfig"):
        CLIPVisionTower(TINY.to_dict())
