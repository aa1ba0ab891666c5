"""Tiny random HF ``transformers.LlamaForCausalLM`` checkpoints in the real on-disk layouts.

Layouts: ``"sharded"`` (>= 2 ``model-*.safetensors`` + index), ``"single"`` (``model.safetensors``), ``"bin"``
(``pytorch_model-*.bin`` + ``pytorch_model.bin.index.json``, written the way transformers 4 wrote them, including the
``rotary_emb.inv_freq`` buffers old versions stored: transformers 5 no longer writes pickles).
"""

import json
from pathlib import Path

import torch
import transformers

__all__ = ["LAYOUTS", "tiny_hf_config", "make_hf_llama", "write_hf_llama", "write_bin_shards"]

LAYOUTS = ("sharded", "single", "bin")


def tiny_hf_config(**overrides) -> transformers.LlamaConfig:
    """A 2-layer GQA Llama (4 query heads, 2 key/value heads, head_dim 8); ``overrides`` are HF config fields."""
    fields = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
        rope_theta=10000.0,
        pad_token_id=0,
    )
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)


def make_hf_llama(*, seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
    """A tiny fp32 HF model in eval mode with every weight random (norm weights around 1), SDPA attention."""
    config = tiny_hf_config(**overrides)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.15 * noise)
    return model


def _detached(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def write_bin_shards(state_dict: dict[str, torch.Tensor], folder: Path, *, shards: int = 2) -> None:
    """``pytorch_model-0000i-of-0000n.bin`` files plus ``pytorch_model.bin.index.json`` (values are pickled as
    given, so tests can plant non-tensor objects)."""
    keys = list(state_dict)
    per_shard = -(-len(keys) // shards)
    weight_map = {}
    for number in range(shards):
        name = f"pytorch_model-{number + 1:05d}-of-{shards:05d}.bin"
        chunk = {key: _detached(state_dict[key]) for key in keys[number * per_shard : (number + 1) * per_shard]}
        torch.save(chunk, folder / name)
        weight_map.update({key: name for key in chunk})
    total = sum(t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def write_hf_llama(
    folder: str | Path, layout: str = "sharded", *, seed: int = 0, **overrides
) -> tuple[Path, transformers.LlamaForCausalLM]:
    """Write a tiny random HF Llama to ``folder`` in ``layout``; return the folder and the HF model (for parity)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder = Path(folder)
    model = make_hf_llama(seed=seed, **overrides)
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
        if len(list(folder.glob("model-*.safetensors"))) < 2:
            raise AssertionError(f"{folder}: expected >= 2 safetensors shards")
    elif layout == "single":
        model.save_pretrained(folder, max_shard_size="100GB")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        state_dict = dict(model.state_dict())
        if model.config.tie_word_embeddings:
            state_dict.pop("lm_head.weight", None)
        inv_freq = model.model.rotary_emb.inv_freq
        for index in range(model.config.num_hidden_layers):
            state_dict[f"model.layers.{index}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
        write_bin_shards(state_dict, folder, shards=2)
    return folder, model
