"""What vLLM reads of an MF-RSVLM folder before it builds the model: a transformers config for the folder's
``config.json`` (`RsfuseVllmConfig`: vLLM sizes its KV cache from ``text_config``), and the engine settings the
model needs (`EngineSettings`, run by vLLM while it builds its config, in the process that starts the engine).

The model itself reads the folder's full ``MFRSVLMConfig`` through rsfuse's format registry (`rsfuse_config`), so
the rsfuse, released and llava-hf layouts are read exactly as ``MFRSVLM.from_pretrained`` reads them.
"""

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from transformers import LlamaConfig as HFLlamaConfig
from transformers import PretrainedConfig
from vllm.model_executor.models.config import VerifyAndUpdateConfig

from rsfuse.checkpoints.formats import checkpoint_format
from rsfuse.checkpoints.hub import resolve_model
from rsfuse.model.config import MFRSVLMConfig
from rsfuse.vllm.names import ARCHITECTURE

__all__ = ["EngineSettings", "RsfuseVllmConfig", "VllmPluginError", "folder_config", "model_folder", "placeholder_id",
           "rsfuse_config"]

logger = logging.getLogger("rsfuse.vllm")

# The Llama fields a released (LLaVA-style, flat) config.json carries at its top level.
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "attention_bias", "mlp_bias",
)


class VllmPluginError(ValueError):
    """A folder, setting or prompt the vLLM plugin cannot serve; the message is one line naming it."""


def _text_config(fields: dict[str, Any]) -> HFLlamaConfig:
    fields = {key: value for key, value in fields.items() if key in _LLAMA_FIELDS and value is not None}
    theta = fields.pop("rope_theta", 10000.0)
    scaling = fields.pop("rope_scaling", None) or {}
    rope = {"rope_type": "default", **scaling, "rope_theta": theta}
    if "type" in rope:
        rope["rope_type"] = rope.pop("type")
    return HFLlamaConfig(**fields, rope_parameters=rope, architectures=["LlamaForCausalLM"])


class RsfuseVllmConfig(PretrainedConfig):
    """The transformers view of an rsfuse (``"llm"`` holds the decoder) or released MF-RSVLM (flat Llama fields)
    ``config.json``: ``text_config`` is the decoder as a transformers ``LlamaConfig``; the architecture is the
    plugin's whatever the file names (the released files name the authors' training class)."""

    model_type = "rsfuse_mfrsvlm"
    sub_configs = {"text_config": HFLlamaConfig}

    def __init__(self, text_config: Any = None, **kwargs: Any) -> None:
        kwargs["architectures"] = [ARCHITECTURE]
        if isinstance(text_config, HFLlamaConfig):
            self.text_config = text_config
        elif isinstance(text_config, dict):
            self.text_config = HFLlamaConfig(**text_config)
        elif isinstance(kwargs.get("llm"), dict):
            self.text_config = _text_config(kwargs["llm"])
        else:
            self.text_config = _text_config(kwargs)
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            kwargs.pop(key, None)  # the decoder's numbers live in text_config only
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> HFLlamaConfig:
        return self.text_config


@lru_cache(maxsize=8)
def folder_config(folder: str | Path) -> MFRSVLMConfig:
    """The ``MFRSVLMConfig`` a model folder describes, from its config files, by rsfuse's format registry."""
    return MFRSVLMConfig.from_dict(checkpoint_format(folder).read_config(folder))


def model_folder(model_config: Any) -> Path:
    """The local folder of the model vLLM serves (a Hub id resolved in the Hub cache, as rsfuse resolves it)."""
    return resolve_model(str(model_config.model), revision=getattr(model_config, "revision", None),
                         need="processor").path


def rsfuse_config(model_config: Any) -> MFRSVLMConfig:
    """The ``MFRSVLMConfig`` of the folder (or Hub id) vLLM serves (`folder_config`)."""
    return folder_config(model_folder(model_config))


def placeholder_id(config: MFRSVLMConfig) -> int:
    """The id that holds an image's visual slots in vLLM's token ids: the model's image token when it is a vocabulary
    id (llava-hf's ``<image>``), else the pad id (LLaVA's −200 is no id vLLM accepts). The model never embeds it: the
    visual slots get the image's features."""
    token = config.image_token_index
    return token if 0 <= token < config.llm.vocab_size else config.llm.pad_id


class EngineSettings(VerifyAndUpdateConfig):
    """vLLM's per-architecture config hook (``MODELS_CONFIG_MAP``): set what MF-RSVLM needs, refuse what it cannot run.

    * The router pools over an image's whole visual span at each injection layer, so a prefill step must hold every
      visual token of an image: ``disable_chunked_mm_input`` is set (vLLM's scheduler then never splits an image),
      and the prefix cache is turned off (a cache hit could end inside a span and leave its tail to be injected
      alone). A step budget (``max_num_batched_tokens``) smaller than one span is refused.
    * Pipeline parallelism is refused (the injectors run between decoder layers on one rank); tensor parallelism is
      vLLM's, for the decoder.
    * On the CPU, a head size vLLM's CPU attention does not take is refused.
    """

    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        config = rsfuse_config(vllm_config.model_config)
        where = str(vllm_config.model_config.model)
        scheduler, cache = vllm_config.scheduler_config, vllm_config.cache_config
        if not scheduler.disable_chunked_mm_input:
            scheduler.disable_chunked_mm_input = True
            logger.info("rsfuse.vllm: disable_chunked_mm_input set (an image's visual span is never split)")
        if cache.enable_prefix_caching:
            cache.enable_prefix_caching = False
            logger.info("rsfuse.vllm: prefix caching off (a cached prefix could end inside a visual span)")
        tokens = config.num_visual_tokens
        budget = scheduler.max_num_batched_tokens
        if budget is not None and budget < tokens + 1:
            raise VllmPluginError(f"{where}: max_num_batched_tokens {budget} is smaller than one image's visual span "
                                  f"plus a token ({tokens + 1}); raise it")
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise VllmPluginError(f"{where}: pipeline parallelism is not supported by the MF-RSVLM plugin (the "
                                  "injectors run between decoder layers); use tensor parallelism")
        check_head_size(config, where)


def check_head_size(config: MFRSVLMConfig, where: str) -> None:
    """Refuse, in one line, a decoder head size the CPU attention of vLLM does not take (on a CPU platform)."""
    from vllm.platforms import current_platform  # noqa: PLC0415

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend  # noqa: PLC0415

    head = config.llm.head_dim or config.llm.hidden_size // config.llm.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise VllmPluginError(f"{where}: decoder head size {head} is not one vLLM's CPU attention runs (it takes "
                              f"{sizes}); serve it with rsfuse serve")
