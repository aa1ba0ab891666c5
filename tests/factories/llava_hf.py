"""Tiny random transformers ``LlavaForConditionalGeneration`` checkpoints (the llava-hf layout).

* ``tiny_hf_llava(seed, ...)``: a transformers LLaVA-1.5 in eval mode, fp32, eager attention, every weight random
  (biases and norms included), CLIP vision tower 56 px / patch 14 (4×4 = 16 visual tokens, 3 blocks) and a 2-layer
  GQA Llama whose vocabulary holds the image token (``IMAGE_TOKEN`` 98 of 100, as ``<image>`` = 32000 of 32064 on
  the Hub).
* ``write_hf_llava(folder, ...)``: ``save_pretrained`` (safetensors), then optionally the keys re-spelled the way
  other transformers versions store them (``key_style``) and/or a ``config.json`` stripped of every sub-config field
  that equals transformers' default (``sparse_config``), as the Hub's ``llava-hf/llava-1.5-7b-hf`` config is.
"""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

__all__ = ["IMAGE_TOKEN", "NUM_VISUAL_TOKENS", "VOCAB_SIZE", "KEY_STYLES", "tiny_hf_llava", "write_hf_llava"]

VOCAB_SIZE = 100
IMAGE_TOKEN = 98
IMAGE_SIZE = 56
NUM_VISUAL_TOKENS = (IMAGE_SIZE // 14) ** 2
KEY_STYLES = ("saved", "hub", "inner")


def tiny_hf_llava(
    seed: int = 0,
    *,
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    image_token_field: str = "image_token_index",
    image_token: int = IMAGE_TOKEN,
    text_overrides: dict | None = None,
) -> transformers.LlavaForConditionalGeneration:
    vision = transformers.CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
    )
    text_fields = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    text = transformers.LlamaConfig(**{**text_fields, **(text_overrides or {})})
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_seq_length=NUM_VISUAL_TOKENS,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        **{image_token_field: image_token},
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.1 * noise)
            elif "class_embedding" in name or "position_embedding" in name:
                parameter.copy_(0.5 * noise)
            else:
                parameter.copy_(0.15 * noise)
    return model.eval()


def _respell(key: str, style: str) -> str:
    """A key as transformers 5 ``save_pretrained`` writes it → the same weight in another stored spelling."""
    if style == "saved":
        return key
    if key.startswith("vision_tower."):
        rest = key.removeprefix("vision_tower.")
        return ("vision_tower.vision_model." if style == "hub" else "model.vision_tower.vision_model.") + rest
    if style == "hub":
        return key
    if key.startswith("language_model.lm_head."):
        return key.removeprefix("language_model.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key.startswith("multi_modal_projector."):
        return "model." + key
    raise AssertionError(f"unexpected saved key {key}")


def _sparse(sub: dict, default: dict) -> dict:
    return {key: value for key, value in sub.items() if key == "model_type" or default.get(key, object()) != value}


def write_hf_llava(
    folder: str | Path,
    *,
    seed: int = 0,
    key_style: str = "saved",
    sparse_config: bool = False,
    **model_options,
) -> tuple[Path, transformers.LlavaForConditionalGeneration]:
    """Save ``tiny_hf_llava(seed, **model_options)`` into ``folder``; ``key_style`` "saved" (as written by transformers
    5: ``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.*``), "hub" (``vision_tower.vision_model.*``)
    or "inner" (``model.language_model.*``, ``lm_head.*``, ``model.vision_tower.vision_model.*``,
    ``model.multi_modal_projector.*``, in two shards with an index)."""
    folder = Path(folder)
    model = tiny_hf_llava(seed, **model_options)
    model.save_pretrained(folder, safe_serialization=True)
    if key_style != "saved":
        weights = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        renamed = {_respell(key, key_style): value for key, value in weights.items()}
        keys = sorted(renamed)
        halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        weight_map = {}
        for name, part in halves.items():
            save_file({key: renamed[key] for key in part}, str(folder / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in part})
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if sparse_config:
        path = folder / "config.json"
        data = json.loads(path.read_text())
        data["text_config"] = _sparse(data["text_config"], transformers.LlamaConfig().to_dict())
        data["vision_config"] = _sparse(data["vision_config"], transformers.CLIPVisionConfig().to_dict())
        path.write_text(json.dumps(data, indent=2))
    return folder, model
