"""Checks at checkpoint load and save (issue 17, defects 5 and 8).

* Floating tensors holding NaN/inf are refused as they are read, on by default in every layout (rsfuse folder,
  released MF-RSVLM with its ``vision_tower/*.bin``, HF Llama ``.bin`` shards, HF CLIP, llava-hf), the message naming
  the file and the stored key; ``check_finite=False`` loads them anyway.
* ``MFRSVLM.save_pretrained(dir, tokenizer=<rsfuse Tokenizer>)`` writes the tokenizer (it used to fail with
  "tokenizer file not found").
"""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from factories.clip import write_hf_clip_vision
from factories.llama import write_hf_llama
from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import MICRO_VISION, make_model, micro_llm, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from rsfuse import MFRSVLM
from rsfuse.checkpoints import CheckpointError, load_weights_file, read_clip_vision, read_llama
from rsfuse.model.convert import main as convert_main


def _plant(path: Path, key: str, value: float, *, index: int = 0) -> None:
    """Rewrite one weights file with ``value`` at flat position ``index`` of tensor ``key``."""
    tensors = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    assert key in tensors, sorted(tensors)[:10]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[index] = value
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)


def _shard_holding(folder: Path, key: str) -> Path:
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        keys = load_file(str(path)).keys() if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        if key in keys:
            return path
    raise AssertionError(f"{key} in no file of {folder}")


# ----- non-finite weights -----------------------------------------------------------------------------------------
def test_rsfuse_folder_with_nan_is_refused_naming_file_and_key(tmp_path):
    folder = make_model(seed=2).save_pretrained(tmp_path / "saved", max_shard_bytes=40_000)
    key = "llm.model.layers.1.mlp.up_proj.weight"
    shard = _shard_holding(folder, key)
    _plant(shard, key, math.nan, index=5)
    with pytest.raises(CheckpointError) as caught:
        MFRSVLM.from_pretrained(folder)
    message = str(caught.value)
    assert shard.name in message and key in message and "NaN" in message
    assert "1 of" in message  # one bad value counted
    loaded = MFRSVLM.from_pretrained(folder, check_finite=False)
    assert torch.isnan(loaded.state_dict()[key]).sum() == 1
    # The CLI names it too, in one line, and writes nothing.
    assert convert_main([str(folder), str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()


def test_released_layout_with_inf_in_the_tower_bin_is_refused(tmp_path):
    folder, _ = write_released_checkpoint(tmp_path / "released")
    tower_file = folder / "vision_tower" / "pytorch_model.bin"
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    _plant(tower_file, key, -math.inf)
    with pytest.raises(CheckpointError, match=rf"pytorch_model\.bin.*{key}"):
        MFRSVLM.from_pretrained(folder)


def test_half_precision_inf_in_hf_llama_bin_shards_is_refused(tmp_path):
    llm = micro_llm()
    folder, _ = write_hf_llama(
        tmp_path / "llama", "bin", vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads, num_key_value_heads=llm.num_key_value_heads,
    )
    key = "model.embed_tokens.weight"
    shard = _shard_holding(folder, key)
    tensors = torch.load(shard, weights_only=True)
    tensors = {name: value.half() if value.is_floating_point() else value for name, value in tensors.items()}
    tensors[key].view(-1)[3] = math.inf
    torch.save(tensors, shard)
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*{key}"):
        read_llama(folder)
    clip = write_hf_clip_vision(tmp_path / "clip", config=MICRO_VISION)
    with pytest.raises(CheckpointError, match=key):
        MFRSVLM.from_parts(vision=clip, llm=folder, global_layer=3, injection_layers=[1])
    _, state = read_llama(folder, check_finite=False)
    assert torch.isinf(state[key]).sum() == 1


def test_clip_and_llava_hf_folders_with_nan_are_refused(tmp_path):
    clip = write_hf_clip_vision(tmp_path / "clip", config=MICRO_VISION)
    key = "vision_model.post_layernorm.bias"
    _plant(clip / "model.safetensors", key, math.nan)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors.*{key}"):
        read_clip_vision(clip)
    folder, _ = write_hf_llava(tmp_path / "llava", seed=1)
    stored = "multi_modal_projector.linear_2.weight"
    _plant(folder / "model.safetensors", stored, math.nan)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors.*{stored}"):
        MFRSVLM.from_parts(vision=None, llava=folder)
    assert torch.isnan(MFRSVLM.from_parts(vision=None, llava=folder, check_finite=False).projector[2].weight).any()


def test_integer_tensors_and_finite_extremes_pass_and_every_bad_value_is_counted(tmp_path):
    path = tmp_path / "weights.safetensors"
    tensors = {
        "ids": torch.arange(5),
        "big": torch.full((4096,), torch.finfo(torch.float16).max, dtype=torch.float16),  # finite; its sum overflows
        "empty": torch.zeros(0),
    }
    save_file(tensors, str(path))
    assert set(load_weights_file(path)) == {"ids", "big", "empty"}
    tensors["big"][[1, 2, 3]] = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float16)
    tensors["small"] = torch.tensor([1.0, math.inf, -math.inf])  # +inf and -inf: a NaN sum, still caught
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as caught:
        load_weights_file(path)
    assert "'big' (3 of 4096 values)" in str(caught.value) and "'small' (2 of 3 values)" in str(caught.value)


# ----- save_pretrained(tokenizer=Tokenizer) -----------------------------------------------------------------------
def test_save_pretrained_accepts_an_rsfuse_tokenizer(tmp_path):
    model = make_model(seed=1)
    folder = model.save_pretrained(tmp_path / "with_tokenizer", tokenizer=tiny_tokenizer())
    source = (tiny_tokenizer_dir() / "tokenizer.model").read_bytes()
    assert (folder / "tokenizer.model").read_bytes() == source
    assert MFRSVLM.from_pretrained(folder).tokenizer_path == folder / "tokenizer.model"
    # Saving again into the same folder (the tokenizer writes where the model copies to) still works.
    model.save_pretrained(folder, tokenizer=tiny_tokenizer())
    assert (folder / "tokenizer.model").read_bytes() == source
