"""Tiny random CLIP checkpoints in the real file layouts, all holding ONE set of vision weights per seed.

* ``tiny_hf_clip(seed)``: a transformers ``CLIPModel`` (tiny vision tower of ``CLIPVisionConfig.tiny()`` + tiny text
  tower) whose every parameter (biases and LayerNorms included) is random, so a wrong key mapping cannot pass.
* ``tiny_hf_clip_vision(seed)``: a transformers ``CLIPVisionModel`` with the same vision weights (parity reference).
* ``write_hf_clip_full(folder)``: HF full CLIP folder (config.json with ``vision_config``, ``vision_model.*`` +
  ``text_model.*`` + projections).
* ``write_hf_clip_vision(folder)``: HF vision-only folder as on the Hub and in MF-RSVLM's ``vision_tower/``
  (``vision_model.*`` keys; ``file_format="bin"`` writes ``pytorch_model.bin``), or ``key_style="transformers"`` for
  what transformers 5 ``save_pretrained`` writes (unprefixed keys).
* ``write_openai_clip(path)``: an OpenAI/open_clip state-dict file (``visual.*`` with fused ``in_proj`` + text keys).
"""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from rsfuse.encoders import CLIPVisionConfig

__all__ = [
    "TINY_TEXT_CONFIG",
    "hf_vision_config",
    "openai_state_dict",
    "tiny_hf_clip",
    "tiny_hf_clip_vision",
    "write_hf_clip_full",
    "write_hf_clip_vision",
    "write_openai_clip",
]

TINY_TEXT_CONFIG = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
PROJECTION_DIM = 16


def hf_vision_config(config: CLIPVisionConfig | None = None) -> transformers.CLIPVisionConfig:
    """The transformers config equal to ``config`` (default ``CLIPVisionConfig.tiny()``)."""
    config = config or CLIPVisionConfig.tiny()
    fields = {key: value for key, value in config.to_dict().items() if key != "model_type"}
    return transformers.CLIPVisionConfig(**fields, projection_dim=PROJECTION_DIM)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Deterministic random values for every parameter: LayerNorm weights near 1, biases and embeddings non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name == "logit_scale":
                param.fill_(2.6592)
            elif ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif "class_embedding" in name or "position_embedding" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(0.05 * noise)


def tiny_hf_clip(seed: int = 0, config: CLIPVisionConfig | None = None) -> transformers.CLIPModel:
    """A transformers ``CLIPModel`` in eval mode, fp32, random weights fixed by ``seed``."""
    clip_config = transformers.CLIPConfig(
        vision_config=hf_vision_config(config).to_dict(), text_config=TINY_TEXT_CONFIG, projection_dim=PROJECTION_DIM
    )
    model = transformers.CLIPModel(clip_config)
    _randomize(model, seed)
    return model.eval()


def _vision_body(model: transformers.CLIPVisionModel) -> torch.nn.Module:
    """The vision transformer inside ``CLIPVisionModel`` (transformers 4 nests it as ``vision_model``, 5 does not)."""
    return getattr(model, "vision_model", model)


def tiny_hf_clip_vision(seed: int = 0, config: CLIPVisionConfig | None = None) -> transformers.CLIPVisionModel:
    """A transformers ``CLIPVisionModel`` holding the vision weights of ``tiny_hf_clip(seed, config)``."""
    full = tiny_hf_clip(seed, config)
    vision = transformers.CLIPVisionModel(hf_vision_config(config))
    _vision_body(vision).load_state_dict(full.vision_model.state_dict(), strict=True)
    return vision.eval()


def _vision_tensors(full: transformers.CLIPModel) -> dict[str, torch.Tensor]:
    """``vision_model.*`` tensors of a full CLIP model (the Hub's key names)."""
    return {f"vision_model.{key}": value.contiguous() for key, value in full.vision_model.state_dict().items()}


def _write_weights(tensors: dict[str, torch.Tensor], folder: Path, file_format: str) -> Path:
    tensors = {key: value.detach().contiguous() for key, value in tensors.items()}
    if file_format == "safetensors":
        target = folder / "model.safetensors"
        save_file(tensors, str(target), metadata={"format": "pt"})
    elif file_format == "bin":
        target = folder / "pytorch_model.bin"
        torch.save(tensors, target)
    else:
        raise ValueError(f"file_format must be 'safetensors' or 'bin', got {file_format!r}")
    return target


def write_hf_clip_full(
    folder: str | Path, *, seed: int = 0, config: CLIPVisionConfig | None = None, file_format: str = "safetensors"
) -> Path:
    """HF full CLIP folder. safetensors goes through ``save_pretrained``; "bin" writes ``pytorch_model.bin`` itself."""
    folder = Path(folder)
    full = tiny_hf_clip(seed, config)
    if file_format == "safetensors":
        full.save_pretrained(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        full.config.save_pretrained(folder)
        _write_weights(full.state_dict(), folder, file_format)
    return folder


def write_hf_clip_vision(
    folder: str | Path,
    *,
    seed: int = 0,
    config: CLIPVisionConfig | None = None,
    file_format: str = "safetensors",
    key_style: str = "vision_model",
    config_style: str = "vision",
    legacy_position_ids: bool = False,
) -> Path:
    """HF vision-only CLIP folder with the vision weights of ``tiny_hf_clip(seed, config)``.

    ``key_style``: "vision_model" (Hub / MF-RSVLM ``vision_tower/`` keys) or "transformers" (transformers 5
    ``save_pretrained``, unprefixed). ``config_style``: "vision" (model_type clip_vision_model) or "full" (a full CLIP
    config.json, as some vision-tower folders carry). ``legacy_position_ids`` adds the old persistent
    ``vision_model.embeddings.position_ids`` buffer.
    """
    folder = Path(folder)
    full = tiny_hf_clip(seed, config)
    if key_style == "transformers":
        vision = transformers.CLIPVisionModel(hf_vision_config(config))
        _vision_body(vision).load_state_dict(full.vision_model.state_dict(), strict=True)
        vision.save_pretrained(folder)
        return folder
    if key_style != "vision_model":
        raise ValueError(f"key_style must be 'vision_model' or 'transformers', got {key_style!r}")
    folder.mkdir(parents=True, exist_ok=True)
    if config_style == "vision":
        hf_vision_config(config).save_pretrained(folder)
    elif config_style == "full":
        full.config.save_pretrained(folder)
    else:
        raise ValueError(f"config_style must be 'vision' or 'full', got {config_style!r}")
    tensors = _vision_tensors(full)
    if legacy_position_ids:
        positions = full.config.vision_config.image_size // full.config.vision_config.patch_size
        tensors["vision_model.embeddings.position_ids"] = torch.arange(positions**2 + 1)[None]
    _write_weights(tensors, folder, file_format)
    return folder


def _openai_blocks(
    hf: dict[str, torch.Tensor], hf_prefix: str, openai_prefix: str, layers: int
) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        src, dst = f"{hf_prefix}encoder.layers.{i}.", f"{openai_prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([hf[f"{src}self_attn.{n}_proj.{kind}"] for n in "qkv"], dim=0)
            out[f"{dst}attn.out_proj.{kind}"] = hf[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = hf[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = hf[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = hf[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = hf[f"{src}mlp.fc2.{kind}"]
    return out


def openai_state_dict(full: transformers.CLIPModel) -> dict[str, torch.Tensor]:
    """The OpenAI/open_clip state dict of an HF ``CLIPModel`` (inverse of HF's conversion script), text tower included."""
    hf = {key: value.detach().clone() for key, value in full.state_dict().items()}
    vision, text = full.config.vision_config, full.config.text_config
    out = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    out.update(_openai_blocks(hf, "vision_model.", "visual.", vision.num_hidden_layers))
    out.update(_openai_blocks(hf, "text_model.", "", text.num_hidden_layers))
    return out


def write_openai_clip(
    path: str | Path, *, seed: int = 0, config: CLIPVisionConfig | None = None, open_clip_config: bool = False
) -> Path:
    """Write the OpenAI-layout state dict of ``tiny_hf_clip(seed, config)`` to ``path`` (.safetensors, or a pickle for
    .bin/.pt/.pth). ``open_clip_config`` also writes ``open_clip_config.json`` beside it with the head width."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = config or CLIPVisionConfig.tiny()
    tensors = {key: value.contiguous() for key, value in openai_state_dict(tiny_hf_clip(seed, config)).items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)
    if open_clip_config:
        vision_cfg = {
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "width": config.hidden_size,
            "layers": config.num_hidden_layers,
            "head_width": config.head_dim,
            "mlp_ratio": config.intermediate_size / config.hidden_size,
        }
        model_cfg = {"embed_dim": PROJECTION_DIM, "quick_gelu": config.hidden_act == "quick_gelu", "vision_cfg": vision_cfg}
        (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2))
    return path
