"""The language side: the Llama decoder (config, model, KV caches) and, beside it, tokenizer and chat templates."""

from rsfuse.llm.cache import DynamicKVCache, KVCache, StaticKVCache
from rsfuse.llm.config import LlamaConfig
from rsfuse.llm.model import LlamaForCausalLM, LlamaModel, LlamaOutput
from rsfuse.llm.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    ConversationError,
    ConversationTemplate,
    TokenizationMismatchError,
    TokenizedConversation,
    build_prompt,
    get_template,
    tokenize_conversation,
    tokenize_prompt,
)
from rsfuse.llm.tokenizer import Tokenizer, TokenizerError, train_sentencepiece

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "TEMPLATES",
    "ConversationError",
    "ConversationTemplate",
    "TokenizationMismatchError",
    "TokenizedConversation",
    "Tokenizer",
    "TokenizerError",
    "build_prompt",
    "get_template",
    "tokenize_conversation",
    "tokenize_prompt",
    "train_sentencepiece",
    "DynamicKVCache",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaModel",
    "LlamaOutput",
    "StaticKVCache",
]
