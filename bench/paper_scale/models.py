"""Random paper-scale models built on the device: rsfuse's MF-RSVLM, and transformers' LLaVA-1.5 and CLIP
sharing its weights."""

import contextlib
import dataclasses

import torch

from rsfuse import MFRSVLM, MFRSVLMConfig
from rsfuse.checkpoints.llava_hf import rename_llava_hf_key
from rsfuse.llm.rope import RotaryEmbedding
from paper_scale.common import default_dtype



# ----- models ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def random_mfrsvlm(config: MFRSVLMConfig, device: torch.device, dtype: torch.dtype, seed: int) -> MFRSVLM:
    """An ``MFRSVLM`` with random weights, built on the meta device and materialised in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = MFRSVLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.endswith("residual_scale"):
            parameter.fill_(config.residual_scale_init)
        elif parameter.ndim == 1 and name.endswith("weight"):
            parameter.fill_(1.0)
        elif parameter.ndim == 1:
            parameter.zero_()
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters(device)
    return model.eval()


def llava_shaped(config: MFRSVLMConfig) -> MFRSVLMConfig:
    """rsfuse global-only with LLaVA-1.5's settings and llava-hf's vocabulary (image token = the first extra id)."""
    llm = dataclasses.replace(config.llm, vocab_size=config.llm.vocab_size + 64)
    return dataclasses.replace(
        config, llm=llm, detail=False, global_layer=-2, image_placement="token", image_token_index=config.llm.vocab_size
    )


@contextlib.contextmanager
def no_weight_init():
    """transformers' ``no_init_weights`` (parameters left uninitialised: they are replaced right after)."""
    try:
        from transformers.initialization import no_init_weights  # noqa: PLC0415  (transformers 5)
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # noqa: PLC0415  (transformers 4)
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def hf_vision_config(config: MFRSVLMConfig):
    import transformers  # noqa: PLC0415

    vision = config.vision
    return transformers.CLIPVisionConfig(
        image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads, hidden_act=vision.hidden_act,
        layer_norm_eps=vision.layer_norm_eps, projection_dim=vision.hidden_size,
    )


def build_llava_hf(global_only: MFRSVLM, device: torch.device, dtype: torch.dtype):
    """transformers' ``LlavaForConditionalGeneration`` of the same shapes whose parameters ARE ``global_only``'s
    tensors (``load_state_dict(assign=True)``, every key mapped by rsfuse's llava-hf key reader; nothing copied)."""
    import transformers  # noqa: PLC0415

    config, llm = global_only.config, global_only.config.llm
    text = transformers.LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, head_dim=llm.head_dim, rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta, max_position_embeddings=llm.max_position_embeddings,
        bos_token_id=llm.bos_token_id, eos_token_id=llm.eos_token_id, pad_token_id=llm.pad_token_id,
    )
    llava_config = transformers.LlavaConfig(
        vision_config=hf_vision_config(config), text_config=text, image_token_index=config.image_token_index,
        vision_feature_layer=config.global_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=config.num_visual_tokens,
    )
    llava_config._attn_implementation = "sdpa"
    with torch.device(device), default_dtype(dtype), no_weight_init():
        llava = transformers.LlavaForConditionalGeneration(llava_config)
    ours = global_only.state_dict()
    prefix = {"llm": "llm.", "vision": "vision_tower.", "projector": "projector."}
    mapped = {}
    for key in llava.state_dict():
        renamed = rename_llava_hf_key(key)
        if renamed is None or prefix[renamed[0]] + renamed[1] not in ours:
            raise KeyError(f"transformers' LLaVA key {key!r} has no rsfuse counterpart")
        mapped[key] = ours[prefix[renamed[0]] + renamed[1]]
    llava.load_state_dict(mapped, strict=True, assign=True)
    return llava.eval()


def build_hf_clip(model: MFRSVLM, device: torch.device, dtype: torch.dtype):
    """transformers' ``CLIPVisionModel`` (the authors' tower class) sharing ``model``'s tower tensors."""
    import transformers  # noqa: PLC0415

    vision_config = hf_vision_config(model.config)
    vision_config._attn_implementation = "sdpa"
    with torch.device(device), default_dtype(dtype), no_weight_init():
        clip = transformers.CLIPVisionModel(vision_config)
    ours = model.vision_tower.state_dict()
    mapped = {key: ours[key.removeprefix("vision_model.")] for key in clip.state_dict()}
    clip.load_state_dict(mapped, strict=True, assign=True)
    return clip.eval()


