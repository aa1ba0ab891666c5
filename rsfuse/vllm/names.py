"""The names the plugin registers with vLLM (no vLLM import, so `rsfuse.vllm` imports without vLLM)."""

ARCHITECTURE = "MFRSVLMForConditionalGeneration"
TOKENIZER_MODE = "rsfuse"
MODEL_TYPES = ("rsfuse_mfrsvlm", "mfrsvlm", "vhm")
"""``config.json`` ``model_type`` values whose config the plugin registers (the llava-hf ``llava`` is transformers')."""
