"""Reading HF Llama folders: every layout, LLaVA extras, errors, meta-device loading, save/load round trips."""

import json

import pytest
import torch
import transformers
from factories.llama import LAYOUTS, write_bin_shards, write_hf_llama
from safetensors.torch import load_file, save_file

import rsfuse.checkpoints.assign as assign_module
import rsfuse.llm.model as llama_model_module
from rsfuse.checkpoints import CheckpointError
from rsfuse.checkpoints.llama import keep_llama_keys, read_llama, read_llama_config, split_llama_state_dict
from rsfuse.llm import LlamaConfig, LlamaForCausalLM

IDS = torch.randint(1, 96, (2, 10), generator=torch.Generator().manual_seed(0))


def assert_same_logits(model: LlamaForCausalLM, hf_model) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, hf_model(IDS).logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_and_matches_transformers(tmp_path, layout):
    folder, hf_model = write_hf_llama(tmp_path / layout, layout)
    model = LlamaForCausalLM.from_pretrained(folder)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.device.type == "cpu"
    assert_same_logits(model, hf_model)


def test_read_llama_drops_rotary_buffers_and_returns_config(tmp_path):
    folder, hf_model = write_hf_llama(tmp_path, "bin")
    config, state_dict = read_llama(folder)
    assert config == LlamaConfig.from_dict(hf_model.config.to_dict())
    assert not any("rotary_emb" in key for key in state_dict)
    assert set(state_dict) == set(hf_model.state_dict())


def test_tied_embeddings_without_lm_head_weight(tmp_path):
    folder, hf_model = write_hf_llama(tmp_path, "single", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    model = LlamaForCausalLM.from_pretrained(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_logits(model, hf_model)


def test_llava_folder_extras_are_reported_or_filtered(tmp_path):
    folder, hf_model = write_hf_llama(tmp_path, "single")
    weights = load_file(folder / "model.safetensors")
    extras = {
        "model.mm_projector.0.weight": torch.randn(32, 16),
        "model.mm_projector.0.bias": torch.randn(32),
        "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": torch.randn(16),
    }
    save_file({**weights, **extras}, str(folder / "model.safetensors"))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.update(model_type="llava_llama", mm_vision_tower="openai/clip-vit-large-patch14-336", mm_projector_type="mlp2x_gelu")
    config_path.write_text(json.dumps(config))

    with pytest.raises(CheckpointError, match="model.mm_projector.0.weight"):
        LlamaForCausalLM.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, rename=keep_llama_keys)
    assert_same_logits(model, hf_model)
    _, everything = read_llama(folder)
    llama, rest = split_llama_state_dict(everything)
    assert set(rest) == set(extras) and set(llama) == set(weights)
    assert read_llama_config(folder).extra["mm_projector_type"] == "mlp2x_gelu"


def test_missing_key_is_listed(tmp_path):
    folder, _ = write_hf_llama(tmp_path, "single")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['model.layers.1.mlp.up_proj.weight'\]"):
        LlamaForCausalLM.from_pretrained(folder)


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    folder, _ = write_hf_llama(tmp_path, "single")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.k_proj.weight.*\(32, 32\).*\(16, 32\)"):
        LlamaForCausalLM.from_pretrained(folder)


class NotATensor:
    """A class a weights_only unpickler must refuse to rebuild."""


def test_non_tensor_pickle_is_refused(tmp_path):
    folder, hf_model = write_hf_llama(tmp_path, "bin")
    for path in folder.glob("pytorch_model-*.bin"):
        path.unlink()
    state_dict = dict(hf_model.state_dict())
    state_dict["model.norm.weight"] = NotATensor()
    write_bin_shards(state_dict, folder, shards=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        LlamaForCausalLM.from_pretrained(folder)


def test_folder_without_llama_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="not a Llama config"):
        read_llama_config(tmp_path)


def test_from_pretrained_builds_on_meta_and_assigns_shards(tmp_path, monkeypatch):
    folder, hf_model = write_hf_llama(tmp_path, "sharded")
    devices_at_construction = []
    original_init = llama_model_module.LlamaForCausalLM.__init__

    def spying_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        devices_at_construction.append({p.device.type for p in self.parameters()})

    monkeypatch.setattr(llama_model_module.LlamaForCausalLM, "__init__", spying_init)
    shards_seen = []
    original_assign = assign_module.assign_weights

    def spying_assign(model, shards, **kwargs):
        def counted():
            for path, shard in shards:
                shards_seen.append(path.name)
                yield path, shard

        return original_assign(model, counted(), **kwargs)

    monkeypatch.setattr(assign_module, "assign_weights", spying_assign)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert devices_at_construction == [{"meta"}]
    assert len(shards_seen) >= 2
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_save_pretrained_round_trips_and_transformers_reads_it(tmp_path):
    folder, hf_model = write_hf_llama(tmp_path / "hf", "single", rope_scaling={"rope_type": "linear", "factor": 2.0})
    model = LlamaForCausalLM.from_pretrained(folder)
    out = tmp_path / "ours"
    model.save_pretrained(out, max_shard_bytes=20_000)
    assert len(list(out.glob("model-*.safetensors"))) >= 2
    reloaded = LlamaForCausalLM.from_pretrained(out)
    assert reloaded.config == model.config
    assert_same_logits(reloaded, hf_model)
    hf_reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert_same_logits(model, hf_reloaded)
