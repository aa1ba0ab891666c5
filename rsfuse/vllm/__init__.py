"""MF-RSVLM served by vLLM: an out-of-tree model plugin (extra ``rsfuse[vllm]``).

Installing rsfuse registers `register` in vLLM's ``vllm.general_plugins`` entry-point group; vLLM calls it in every
process it starts, before it reads a model's config. It registers, by string (nothing heavy is imported until vLLM
needs it):

* the architecture ``MFRSVLMForConditionalGeneration`` (`rsfuse.vllm.model`): rsfuse's own tower, canvas, sampler,
  projector and injectors around vLLM's Llama layers;
* the configs of the rsfuse (``rsfuse_mfrsvlm``) and released MF-RSVLM (``mfrsvlm``, ``vhm``) folders
  (`rsfuse.vllm.config`), and the engine settings the model needs (whole visual spans per step, no prefix cache);
* the tokenizer and chat renderer mode ``"rsfuse"`` (`rsfuse.vllm.tokenizer`): rsfuse's SentencePiece tokenizer and
  conversation template, so a chat request gets exactly the prompt ``MFRSVLMProcessor`` builds.

Serve a folder: ``vllm serve DIR --tokenizer-mode rsfuse`` (a llava-hf folder also needs
``--hf-overrides '{"architectures": ["MFRSVLMForConditionalGeneration"]}'``, else vLLM serves it with its own LLaVA).
docs/VLLM.md has the details and the limits.
"""

from rsfuse.vllm.names import ARCHITECTURE, MODEL_TYPES, TOKENIZER_MODE

__all__ = ["ARCHITECTURE", "MODEL_TYPES", "TOKENIZER_MODE", "register"]


def register() -> None:
    """vLLM's plugin hook (``vllm.general_plugins``): register the model, configs, tokenizer and renderer."""
    from vllm import ModelRegistry  # noqa: PLC0415
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP  # noqa: PLC0415
    from vllm.renderers.registry import RENDERER_REGISTRY  # noqa: PLC0415
    from vllm.tokenizers.registry import TokenizerRegistry  # noqa: PLC0415
    from vllm.transformers_utils.config import _CONFIG_REGISTRY  # noqa: PLC0415

    from rsfuse.vllm.config import EngineSettings, RsfuseVllmConfig  # noqa: PLC0415

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "rsfuse.vllm.model:MFRSVLMForConditionalGeneration")
    for model_type in MODEL_TYPES:
        _CONFIG_REGISTRY[model_type] = RsfuseVllmConfig
    MODELS_CONFIG_MAP[ARCHITECTURE] = EngineSettings
    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(TOKENIZER_MODE, "rsfuse.vllm.tokenizer", "RsfuseTokenizer")
    if TOKENIZER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(TOKENIZER_MODE, "rsfuse.vllm.tokenizer", "RsfuseRenderer")
