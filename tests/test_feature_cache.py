"""``VisionFeatureCache``: cached encodings equal fresh ones exactly, only unseen images are encoded, and a trainable
tower is refused."""

import json

import pytest
import torch
from factories.mfrsvlm import make_model


def _frozen(model):
    for parameter in model.vision_tower.parameters():
        parameter.requires_grad_(False)
    return model


def test_cached_features_equal_fresh_ones_and_only_new_images_are_encoded():
    model = _frozen(make_model(seed=1))
    pixels = torch.randn(3, 3, model.config.input_size, model.config.input_size)
    expected = model.encode_images(pixels)
    cache = model.enable_vision_feature_cache()
    first = model.encode_images(pixels)
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    batch = torch.cat([pixels[2:], torch.randn(1, *pixels.shape[1:]), pixels[:1]])
    second = model.encode_images(batch)
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 4)
    for got, want in zip(first, expected):
        assert torch.equal(got, want)
    assert torch.equal(second[0][0], expected[0][2]) and torch.equal(second[0][2], expected[0][0])
    assert torch.equal(second[1][0], expected[1][2]) and torch.equal(second[1][2], expected[1][0])


def test_gradients_still_reach_the_projector_through_cached_features():
    model = _frozen(make_model(seed=2))
    model.enable_vision_feature_cache()
    pixels = torch.randn(2, 3, model.config.input_size, model.config.input_size)
    model.encode_images(pixels)
    global_tokens, stacks = model.encode_images(pixels)  # all hits
    (global_tokens.sum() + stacks.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())


def test_a_trainable_tower_is_refused():
    model = make_model(seed=3)
    model.enable_vision_feature_cache()
    pixels = torch.randn(1, 3, model.config.input_size, model.config.input_size)
    with pytest.raises(ValueError, match="not frozen"):
        model.encode_images(pixels)


def test_saved_entries_load_into_a_new_cache_and_the_key_follows_what_the_tower_computes(tmp_path):
    from rsfuse.model.feature_cache import VisionFeatureCache, feature_key

    model = _frozen(make_model(seed=4))
    cache = model.enable_vision_feature_cache()
    pixels = torch.randn(2, 3, model.config.input_size, model.config.input_size)
    expected = model.encode_images(pixels)
    cache.save(tmp_path / "features.safetensors")
    fresh = model.enable_vision_feature_cache()
    assert fresh.load(tmp_path / "features.safetensors") == 2
    got = model.encode_images(pixels)
    assert (fresh.hits, fresh.misses) == (2, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))

    key = feature_key(model)
    assert feature_key(_frozen(make_model(seed=4, residual_scale_init=0.0))) == key  # decoder side only
    assert feature_key(_frozen(make_model(seed=4, window_scales=(1.0,)))) != key
    other = _frozen(make_model(seed=4))
    with torch.no_grad():
        other.vision_tower.embeddings.patch_embedding.weight.add_(1e-3)
    assert feature_key(other) != key

    from safetensors.torch import save_file

    save_file({"not-a-digest.global": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*not-a-digest"):
        VisionFeatureCache(model.vision_tower).load(tmp_path / "bad.safetensors")


def test_map_safetensors_reads_every_dtype_as_safetensors_does_and_names_bad_files(tmp_path):
    from safetensors.torch import load_file, save_file

    from rsfuse.model.feature_cache import map_safetensors

    tensors = {"f32": torch.randn(3, 4), "i64": torch.arange(5), "bf16": torch.randn(2, 2).bfloat16(),
               "bool": torch.tensor([True, False, True]), "u8": torch.arange(7, dtype=torch.uint8),
               "empty": torch.zeros(0, 3), "scalar": torch.tensor(3.0), "f16": torch.randn(3).half()}
    save_file(tensors, str(tmp_path / "all.safetensors"), metadata={"note": "kept out of the tensors"})
    mapped, reference = map_safetensors(tmp_path / "all.safetensors"), load_file(str(tmp_path / "all.safetensors"))
    assert set(mapped) == set(reference)
    for name, tensor in reference.items():
        assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name

    values = torch.tensor([1.5, -2.0])  # an F32 tensor one byte into the data: read through a copy of its bytes
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "unaligned.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00"
                                                     + values.numpy().tobytes())
    assert torch.equal(map_safetensors(tmp_path / "unaligned.safetensors")["a"], values)

    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match=r"short\.safetensors: not a safetensors file"):
        map_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "garbled.safetensors").write_bytes((4).to_bytes(8, "little") + b"{no}")
    with pytest.raises(ValueError, match=r"garbled\.safetensors: unreadable safetensors header"):
        map_safetensors(tmp_path / "garbled.safetensors")
