"""MF-RSVLM checkpoints: rsfuse folders, the released layout, assembly from CLIP + Llama / LLaVA, convert, predict."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from factories.clip import write_hf_clip_vision
from factories.llama import write_hf_llama
from factories.mfrsvlm import MICRO_VISION, make_model, micro_llm, write_llava_folder, write_released_checkpoint
from rsfuse.checkpoints.io import CheckpointError
from rsfuse.model import MFRSVLM
from rsfuse.model import convert as convert_command
from rsfuse.model import predict as predict_command


def _pixels(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ids(batch: int = 2, length: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_checkpoint(tmp_path_factory.mktemp("released") / "any-name")


_INJECTOR_PARTS = {
    "deepstack_hidden_norms": "hidden_norm",
    "deepstack_detail_norms": "detail_norm",
    "deepstack_detail_proj": "detail_proj",
    "deepstack_gate_proj": "gate_proj",
    "deepstack_router_query": "router.query",
    "deepstack_router_key": "router.key",
}


def _expected_state_from_released(folder, raw: dict[str, torch.Tensor], layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Every tensor of a released folder under the rsfuse key it must land in, mapped by hand from docs/DESIGN_NOTES.md §3
    (``layers``: the 0-based decoder layers of injection ranks 0, 1, ...). The tower is read from the folder's file."""
    expected: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.startswith("model.mm_projector."):
            expected["projector." + key.removeprefix("model.mm_projector.")] = value
        elif key == "model.deepstack_residual_scale":
            for rank, layer in enumerate(layers):
                expected[f"injectors.{layer}.residual_scale"] = value[rank : rank + 1]
        elif key.startswith("model.deepstack_"):
            part, rank, rest = key.removeprefix("model.").split(".", 2)
            expected[f"injectors.{layers[int(rank)]}.{_INJECTOR_PARTS[part]}.{rest}"] = value
        else:
            expected["llm." + key] = value
    tower = torch.load(folder / "vision_tower" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    for key, value in tower.items():
        expected["vision_tower." + key.removeprefix("vision_model.")] = value
    return expected


def _assert_state_matches(model, expected: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("canvas.")}
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        target = value if dtype is None else value.to(dtype)
        assert state[key].dtype == target.dtype, key
        assert torch.equal(state[key], target), key


# ----- rsfuse folders ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_save_and_load_round_trip_gives_identical_logits(tmp_path):
    model = make_model(seed=21, image_placement="token", blend="mean")
    reference = model(_pixels(), _ids()).logits
    folder = model.save_pretrained(tmp_path / "saved", tokenizer=None, max_shard_bytes=40_000)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "rsfuse_mfrsvlm" and config["image_placement"] == "token"
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2 and (folder / "model.safetensors.index.json").is_file()
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert not [key for key in weight_map if key.startswith("canvas.")], "tower weights must be stored once"
    loaded = MFRSVLM.from_pretrained(folder)
    assert loaded.config == model.config
    assert torch.equal(loaded(_pixels(), _ids()).logits, reference)


def test_rsfuse_folder_errors_list_missing_and_unexpected_keys_and_name_wrong_shapes(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_model(seed=22).save_pretrained(tmp_path / "m", max_shard_bytes=10**9)
    shard = next(folder.glob("model-*.safetensors"))
    tensors = load_file(str(shard))
    tensors.pop("injectors.3.gate_proj.bias")
    tensors["injectors.3.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(shard))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {key: shard.name for key in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['injectors.3.gate_proj.bias'\].*unexpected keys "
                                              r"\(1\): \['injectors.3.extra.weight \(model-00001-of-00001.safetensors\)'\]"):
        MFRSVLM.from_pretrained(folder)
    tensors.pop("injectors.3.extra.weight")
    tensors["injectors.3.gate_proj.bias"] = torch.zeros(7)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"'injectors.3.gate_proj.bias' has shape \(7,\) .* expects \(32,\)"):
        MFRSVLM.from_pretrained(folder)


def test_unknown_model_type_and_pickled_objects_are_refused(tmp_path, released):
    folder = tmp_path / "llama"
    write_hf_llama(folder, "single", hidden_size=32)
    with pytest.raises(CheckpointError, match="model_type 'llama' is not an MF-RSVLM checkpoint"):
        MFRSVLM.from_pretrained(folder)
    copy = tmp_path / "released-copy"
    shutil.copytree(released[0], copy)
    torch.save({"vision_model.post_layernorm.weight": {"not": "a tensor"}}, copy / "vision_tower" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        MFRSVLM.from_pretrained(copy)


# ----- released MF-RSVLM layout -----------------------------------------------------------------------------------------
@torch.no_grad()
def test_released_layout_loads_with_reference_windows_and_every_weight_in_place(released):
    folder, raw = released
    model = MFRSVLM.from_pretrained(folder)
    config = model.config
    assert config.window_layout == "reference" and config.window_scales == (0.5, 1.0)
    assert (config.global_size, config.canvas_size, config.base_window) == (32, 64, 32)
    assert config.detail_layers == (1, 2, 3) and config.global_layer == 3
    assert config.injection_layer_indices == (1, 3) and config.vision == MICRO_VISION
    assert model.tokenizer_path == folder / "tokenizer.model"
    for rank, layer in enumerate(("1", "3")):
        injector = model.injectors[layer]
        assert torch.equal(injector.gate_proj.weight, raw[f"model.deepstack_gate_proj.{rank}.weight"])
        assert torch.equal(injector.hidden_norm.bias, raw[f"model.deepstack_hidden_norms.{rank}.bias"])
        assert torch.equal(injector.router.query[0].weight, raw[f"model.deepstack_router_query.{rank}.0.weight"])
        assert torch.equal(injector.router.key[1].weight, raw[f"model.deepstack_router_key.{rank}.1.weight"])
        assert torch.equal(injector.residual_scale, raw["model.deepstack_residual_scale"][rank : rank + 1])
    assert torch.equal(model.projector[2].weight, raw["model.mm_projector.2.weight"])
    assert torch.equal(model.llm.model.layers[3].mlp.down_proj.weight, raw["model.layers.3.mlp.down_proj.weight"])
    output = model(_pixels(), _ids())
    assert output.logits.shape == (2, 64 + 8, 512) and torch.isfinite(output.logits).all()
    assert model.generate(_pixels(), _ids(), max_new_tokens=3, eos_token_id=[]).shape == (2, 3)



@torch.no_grad()
def test_released_layout_puts_every_tensor_where_the_key_map_says(released):
    folder, raw = released
    model = MFRSVLM.from_pretrained(folder)
    _assert_state_matches(model, _expected_state_from_released(folder, raw, (1, 3)))


@torch.no_grad()
def test_vhm_model_type_loads_the_same_weights_and_logits_as_mfrsvlm(tmp_path):
    layers = (1, 2, 3)
    vhm, raw = write_released_checkpoint(tmp_path / "vhm", model_type="vhm", injection_layers=layers, seed=4)
    mfrsvlm, _ = write_released_checkpoint(tmp_path / "mfrsvlm", injection_layers=layers, seed=4)
    model = MFRSVLM.from_pretrained(vhm)
    _assert_state_matches(model, _expected_state_from_released(vhm, raw, (0, 1, 2)))
    same = MFRSVLM.from_pretrained(mfrsvlm)
    assert model.config == same.config
    assert torch.equal(model(_pixels(), _ids()).logits, same(_pixels(), _ids()).logits)


@torch.no_grad()
def test_vhm_model_type_and_mixed_precision_files_load_in_one_dtype(tmp_path):
    folder, raw = write_released_checkpoint(
        tmp_path / "vhm", model_type="vhm", injection_layers=(1, 2, 3), main_dtype=torch.bfloat16
    )
    model = MFRSVLM.from_pretrained(folder)
    assert model.config.injection_layers == (1, 2, 3)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.injectors["2"].residual_scale, raw["model.deepstack_residual_scale"][2:3])
    assert torch.isfinite(model(_pixels().bfloat16(), _ids()).logits).all()


def test_released_layout_errors_name_keys_and_shapes(tmp_path):
    missing, _ = write_released_checkpoint(tmp_path / "missing", drop_keys=("model.deepstack_detail_proj.1.bias",))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['injectors.3.detail_proj.bias'\]"):
        MFRSVLM.from_pretrained(missing)
    extra, _ = write_released_checkpoint(tmp_path / "extra", extra_tensors={"model.deepstack_unknown.0.weight": torch.ones(2)})
    with pytest.raises(CheckpointError, match=r"model.deepstack_unknown.0.weight \(model-0000\d-of-00002.safetensors\)"):
        MFRSVLM.from_pretrained(extra)
    wrong, _ = write_released_checkpoint(tmp_path / "wrong", reshape={"model.deepstack_gate_proj.0.weight": (32, 32)})
    with pytest.raises(CheckpointError, match=r"'injectors.1.gate_proj.weight' has shape \(32, 32\) .* expects \(32, 64\)"):
        MFRSVLM.from_pretrained(wrong)
    scales, _ = write_released_checkpoint(tmp_path / "scales", reshape={"model.deepstack_residual_scale": (3,)})
    with pytest.raises(CheckpointError, match=r"deepstack_residual_scale has shape \(3,\), expected \(2,\)"):
        MFRSVLM.from_pretrained(scales)


@torch.no_grad()
def test_convert_released_to_rsfuse_folder_keeps_the_logits(tmp_path, released, capsys):
    folder, _ = released
    original = MFRSVLM.from_pretrained(folder)
    assert convert_command.main([str(folder), str(tmp_path / "converted")]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = MFRSVLM.from_pretrained(tmp_path / "converted")
    assert converted.config.window_layout == "reference"
    assert (tmp_path / "converted" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    assert torch.equal(converted(_pixels(), _ids()).logits, original(_pixels(), _ids()).logits)
    assert convert_command.main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err


def _clip_folder_tensors(folder) -> dict[str, torch.Tensor]:
    """The vision tensors of an HF CLIP folder, read straight from its file (no rsfuse code)."""
    from safetensors.torch import load_file

    (path,) = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    tensors = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    return {key.removeprefix("vision_model."): value for key, value in tensors.items()}


def _assert_parts_loaded(model, *, clip_tensors, llm_tensors, dtype=None) -> None:
    """Every tower tensor equals the CLIP file's, every decoder tensor the Llama folder's (cast to ``dtype``)."""
    state = model.state_dict()
    tower = {key.removeprefix("vision_tower."): value for key, value in state.items() if key.startswith("vision_tower.")}
    assert sorted(tower) == sorted(clip_tensors)
    for key, value in clip_tensors.items():
        assert torch.equal(tower[key], value if dtype is None else value.to(dtype)), key
    llm = {key.removeprefix("llm."): value for key, value in state.items() if key.startswith("llm.")}
    assert sorted(llm) == sorted(llm_tensors)
    for key, value in llm_tensors.items():
        assert torch.equal(llm[key], value if dtype is None else value.to(dtype)), key


# ----- assembled from parts ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_from_parts_clip_plus_llama_and_clip_plus_llava(tmp_path):
    clip = write_hf_clip_vision(tmp_path / "clip", seed=5, config=MICRO_VISION)
    llm = micro_llm()
    llama, hf = write_hf_llama(
        tmp_path / "llama", "sharded", vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads, num_key_value_heads=llm.num_key_value_heads,
    )
    model = MFRSVLM.from_parts(vision=clip, llm=llama, global_layer=3, injection_layers=[2, 4])
    assert torch.equal(model.llm.lm_head.weight, hf.lm_head.weight)
    _assert_parts_loaded(model, clip_tensors=_clip_folder_tensors(clip), llm_tensors=hf.state_dict())
    assert model.config.vision == MICRO_VISION and model.config.injection_layer_indices == (1, 3)
    assert model(_pixels(), _ids()).logits.shape == (2, 64 + 8, llm.vocab_size)
    llava, raw = write_llava_folder(tmp_path / "llava")
    assembled = MFRSVLM.from_parts(vision=clip, llava=llava, injection_layers=[4])
    assert assembled.config.global_layer == -2 and assembled.config.global_hidden_index == 2
    assert torch.equal(assembled.projector[0].weight, raw["model.mm_projector.0.weight"])
    assert torch.equal(assembled.llm.model.embed_tokens.weight, raw["model.embed_tokens.weight"])
    _assert_parts_loaded(
        assembled,
        clip_tensors=_clip_folder_tensors(clip),
        llm_tensors={key: value for key, value in raw.items() if not key.startswith("model.mm_projector.")},
    )
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(assembled.state_dict()["projector." + key], raw["model.mm_projector." + key]), key
    assert assembled.tokenizer_path == llava / "tokenizer.model"
    assert assembled(_pixels(), _ids()).loss is None
    with pytest.raises(CheckpointError, match="injection_layers: layer 9"):
        MFRSVLM.from_parts(vision=clip, llava=llava, injection_layers=[9])


# ----- predict ----------------------------------------------------------------------------------------------------------
def test_predict_prints_an_answer(tmp_path, released, capsys):
    folder, _ = released
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    code = predict_command.main(
        ["--model", str(folder), "--image", str(image), "--question", "What is in the image?", "--max-new-tokens", "4",
         "--device", "cpu"]
    )
    assert code == 0
    assert capsys.readouterr().out.endswith("\n")
    assert predict_command.main(
        ["--model", str(folder), "--image", str(tmp_path / "missing.png"), "--question", "?", "--device", "cpu"]
    ) == 2
    assert "missing.png" in capsys.readouterr().err


_CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
_CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_predict_prints_what_generate_and_decode_give_on_the_image(tmp_path, capsys, seed):
    """The printed answer = tokenizer.decode(model.generate(pixels of this image, vicuna prompt)), greedy.

    (A model whose answers depend on the image: the released micro checkpoint answers the same to every image.)"""
    from factories.tokenizer import tiny_tokenizer_dir
    from rsfuse.llm.templates import build_prompt, tokenize_prompt
    from rsfuse.llm.tokenizer import Tokenizer

    folder = make_model(seed=22).save_pretrained(tmp_path / "model", tokenizer=tiny_tokenizer_dir() / "tokenizer.model")
    rgb = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)  # square, tower size: no resize
    image = tmp_path / "scene.png"
    Image.fromarray(rgb).save(image)
    question = "What is in the image?"
    assert predict_command.main(
        ["--model", str(folder), "--image", str(image), "--question", question, "--max-new-tokens", "6",
         "--device", "cpu"]
    ) == 0
    printed = capsys.readouterr().out
    model = MFRSVLM.from_pretrained(folder)
    tokenizer = Tokenizer.from_pretrained(folder)
    pixels = ((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - _CLIP_MEAN) / _CLIP_STD)[None]
    ids = torch.tensor([tokenize_prompt(build_prompt("vicuna_v1", question), tokenizer)])
    assert ids[0].tolist().count(-200) == 1

    def decoded(pixel_values) -> str:
        tokens = model.generate(pixel_values, ids, max_new_tokens=6, eos_token_id=tokenizer.eos_id)[0].tolist()
        return tokenizer.decode([token for token in tokens if token != tokenizer.eos_id]).strip()

    expected = decoded(pixels)
    assert expected and printed == expected + "\n"
    assert decoded(torch.zeros_like(pixels)) != expected  # the answer depends on the image's pixels
