"""read_clip_vision / CLIPVisionTower.from_pretrained: every layout of one set of weights matches transformers."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from factories.clip import (
    tiny_hf_clip_vision,
    write_hf_clip_full,
    write_hf_clip_vision,
    write_openai_clip,
)
from safetensors.torch import load_file, save_file

from rsfuse.checkpoints import CheckpointError, clip_vision_shapes, read_clip_vision, save_clip_vision
from rsfuse.encoders import CLIPVisionConfig, CLIPVisionTower

TINY = CLIPVisionConfig.tiny()
ATOL = 1e-5
LAYOUTS = {
    "hf_full_safetensors": (lambda root: write_hf_clip_full(root / "full"), {}),
    "hf_full_bin": (lambda root: write_hf_clip_full(root / "full_bin", file_format="bin"), {}),
    "hf_vision_safetensors": (lambda root: write_hf_clip_vision(root / "vision"), {}),
    "hf_vision_bin_legacy": (
        lambda root: write_hf_clip_vision(
            root / "vision_tower", file_format="bin", legacy_position_ids=True, config_style="full"
        ),
        {},
    ),
    "hf_vision_transformers5": (lambda root: write_hf_clip_vision(root / "vision_t5", key_style="transformers"), {}),
    "openai_file": (lambda root: write_openai_clip(root / "openai" / "ViT-tiny.pt"), {"num_attention_heads": 4}),
    "open_clip_folder": (
        lambda root: write_openai_clip(root / "open_clip" / "open_clip_model.safetensors", open_clip_config=True).parent,
        {},
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("clip_layouts")
    return {name: (write(root), kwargs) for name, (write, kwargs) in LAYOUTS.items()}


@pytest.fixture(scope="module")
def reference() -> transformers.CLIPVisionModel:
    return tiny_hf_clip_vision(seed=0)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_matches_transformers(checkpoints, reference, pixels, layout):
    path, kwargs = checkpoints[layout]
    config, state_dict = read_clip_vision(path, **kwargs)
    assert config == TINY
    assert {key: tuple(value.shape) for key, value in state_dict.items()} == clip_vision_shapes(TINY)
    tower = CLIPVisionTower.from_pretrained(path, attention_backend="sdpa", **kwargs).eval()
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, output_hidden_states=True).hidden_states
        ours = tower.forward_intermediates(pixels, list(range(TINY.num_hidden_layers + 1)))
    for index, (mine, expected) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(mine, expected[:, 1:], atol=ATOL, rtol=0, msg=f"{layout}: hidden state {index}")
    assert tower.post_layernorm.weight.dtype == torch.float32


def test_all_layouts_hold_identical_tensors(checkpoints):
    loaded = [read_clip_vision(path, **kwargs)[1] for path, kwargs in checkpoints.values()]
    for other in loaded[1:]:
        assert other.keys() == loaded[0].keys()
        for key in loaded[0]:
            assert torch.equal(other[key], loaded[0][key]), key


def test_openai_heads_default_to_width_over_64(checkpoints):
    path, _ = checkpoints["openai_file"]
    config, _ = read_clip_vision(path)
    assert config.num_attention_heads == 1 and config.hidden_act == "quick_gelu"


def test_from_pretrained_dtype(checkpoints):
    path, _ = checkpoints["hf_vision_safetensors"]
    tower = CLIPVisionTower.from_pretrained(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in tower.parameters())
    assert not any(p.is_meta for p in tower.parameters())


def test_save_clip_vision_round_trip_is_readable_by_transformers(checkpoints, reference, pixels, tmp_path):
    config, state_dict = read_clip_vision(checkpoints["hf_full_safetensors"][0])
    for file_format in ("safetensors", "bin"):
        target = save_clip_vision(tmp_path / file_format, config, state_dict, file_format=file_format)
        again_config, again = read_clip_vision(target.parent)
        assert again_config == config and all(torch.equal(again[k], state_dict[k]) for k in state_dict)
    hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / "safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            hf(pixel_values=pixels).last_hidden_state, reference(pixel_values=pixels).last_hidden_state, atol=0, rtol=0
        )


# ----- errors --------------------------------------------------------------------------------------------------------
def _copy_vision_folder(tmp_path: Path, edit) -> Path:
    """A vision-only folder whose weights went through ``edit(dict) -> dict``."""
    folder = write_hf_clip_vision(tmp_path / "edited")
    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(dict(weights)), str(folder / "model.safetensors"))
    return folder


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="nowhere"):
        read_clip_vision(missing)


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    key = "vision_model.encoder.layers.2.mlp.fc1.weight"
    folder = _copy_vision_folder(tmp_path, lambda w: {**w, key: torch.zeros(128, 64)})
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.2\.mlp\.fc1\.weight.*\(128, 64\).*\(256, 64\)"):
        read_clip_vision(folder)


def test_missing_key_is_listed(tmp_path):
    key = "vision_model.encoder.layers.4.layer_norm2.bias"
    folder = _copy_vision_folder(tmp_path, lambda w: {k: v for k, v in w.items() if k != key})
    with pytest.raises(CheckpointError, match=r"missing keys.*encoder\.layers\.4\.layer_norm2\.bias"):
        read_clip_vision(folder)


def test_unexpected_key_is_listed(tmp_path):
    folder = _copy_vision_folder(tmp_path, lambda w: {**w, "vision_model.encoder.layers.9.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys.*layers\.9\.extra"):
        read_clip_vision(folder)


def test_non_tensor_pickle_is_refused(tmp_path):
    folder = write_hf_clip_vision(tmp_path / "pickled", file_format="bin")
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    weights["vision_model.note"] = Path("not a tensor")  # an arbitrary object: needs full unpickling
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        read_clip_vision(folder)


def test_openai_unknown_visual_key_is_refused(tmp_path):
    path = write_openai_clip(tmp_path / "oa.safetensors")
    weights = load_file(str(path))
    weights["visual.transformer.resblocks.0.attn.mystery"] = torch.zeros(2)
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match="mystery"):
        read_clip_vision(path, num_attention_heads=4)


def test_non_clip_config_is_refused(tmp_path):
    folder = write_hf_clip_vision(tmp_path / "llama_config")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match=r"config\.json.*llama"):
        read_clip_vision(folder)


def test_bad_config_value_names_file_and_field(tmp_path):
    folder = write_hf_clip_vision(tmp_path / "bad_value")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "patch_size": -14}))
    with pytest.raises(CheckpointError, match=r"config\.json.*patch_size"):
        read_clip_vision(folder)


def test_conflicting_head_override_is_refused(checkpoints):
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        read_clip_vision(checkpoints["hf_vision_safetensors"][0], num_attention_heads=2)


def test_folder_without_clip_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights"):
        read_clip_vision(tmp_path / "empty")
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no CLIP vision weights"):
        read_clip_vision(tmp_path / "model.safetensors")
