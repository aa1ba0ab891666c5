"""vLLM's tokenizer and chat renderer for MF-RSVLM folders (``tokenizer_mode="rsfuse"``): rsfuse's own SentencePiece
tokenizer and the folder's conversation template, so vLLM tokenizes a prompt, and builds a chat request's prompt,
exactly as ``MFRSVLMProcessor`` does (`rsfuse.processor.prompts`).

Text: ``encode`` is LLaVA's ``tokenizer_image_token`` (`rsfuse.llm.templates.tokenize_prompt`): BOS, then the ids, with
the image placeholder id (`rsfuse.vllm.config.placeholder_id`) where ``<image>`` stands; the multimodal processor
(`rsfuse.vllm.processing`) then lays the visual slots out as rsfuse's sequence layout does. Chat: ``render`` turns
vLLM's parsed conversation (an image part becomes ``<image>`` in its user turn) into the template's prompt ids with
the assistant's turn left open, as ``MFRSVLMProcessor.prompt_ids`` does.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import BatchEncoding
from vllm.renderers.base import BaseRenderer
from vllm.renderers.chat_utils import parse_chat_messages, parse_chat_messages_async
from vllm.renderers.inputs.preprocess import parse_dec_only_prompt
from vllm.tokenizers.protocol import TokenizerLike

from rsfuse.checkpoints.hub import resolve_model
from rsfuse.llm.templates import IMAGE_PLACEHOLDER, tokenize_prompt
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX
from rsfuse.processor import MFRSVLMProcessor
from rsfuse.processor.prompts import prompt_text, template_and_rounds
from rsfuse.vllm.config import folder_config, placeholder_id

__all__ = ["RsfuseRenderer", "RsfuseTokenizer"]


class RsfuseTokenizer(TokenizerLike):
    """vLLM's ``TokenizerLike`` over ``MFRSVLMProcessor.from_pretrained(folder)``'s tokenizer and template."""

    def __init__(self, folder: Path, *, truncation_side: str = "left") -> None:
        self.folder = folder
        self.processor = MFRSVLMProcessor.from_pretrained(folder)
        self.tokenizer = self.processor.tokenizer
        self.image_id = placeholder_id(folder_config(folder))
        self._truncation_side = truncation_side
        self._vocab = {self.tokenizer.id_to_piece(index): index for index in range(self.tokenizer.vocab_size)}

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *args: Any, revision: str | None = None,
                        download_dir: str | None = None, **kwargs: Any) -> "RsfuseTokenizer":
        folder = resolve_model(path_or_repo_id, revision=revision, cache_dir=download_dir, need="processor").path
        return cls(folder, truncation_side=kwargs.get("truncation_side", "left"))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RsfuseTokenizer, (self.folder,), {"_truncation_side": self._truncation_side})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._truncation_side = state["_truncation_side"]

    # ----- ids ---------------------------------------------------------------------------------------------------
    @property
    def all_special_tokens(self) -> list[str]:
        return [self.tokenizer.id_to_piece(index) for index in self.all_special_ids]

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.tokenizer.bos_id, self.tokenizer.eos_id, self.tokenizer.unk_id})

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def pad_token_id(self) -> int:
        return self.processor.pad_token_id

    @property
    def is_fast(self) -> bool:
        return False

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def max_token_id(self) -> int:
        return max(self.tokenizer.vocab_size - 1, self.image_id)

    @property
    def max_chars_per_token(self) -> int:
        return max(len(piece) for piece in self._vocab)

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    def __len__(self) -> int:
        return self.vocab_size

    def num_special_tokens_to_add(self) -> int:
        return 1  # BOS

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def get_added_vocab(self) -> dict[str, int]:
        return {}

    # ----- text -> ids -------------------------------------------------------------------------------------------
    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        ids = [self.image_id if token == IMAGE_TOKEN_INDEX else token for token in tokenize_prompt(text, self.tokenizer)]
        if not add_special_tokens:
            ids = ids[1:]
        if truncation and max_length is not None and len(ids) > max_length:
            ids = ids[-max_length:] if self._truncation_side == "left" else ids[:max_length]
        return ids

    def __call__(self, text: str | list[str], text_pair: str | None = None, add_special_tokens: bool = True,
                 truncation: bool = False, max_length: int | None = None) -> BatchEncoding:
        if text_pair is not None:
            raise ValueError("rsfuse tokenizer: text pairs are not supported")
        encode = lambda one: self.encode(one, truncation, max_length, add_special_tokens)  # noqa: E731
        ids = encode(text) if isinstance(text, str) else [encode(one) for one in text]
        mask = [1] * len(ids) if isinstance(text, str) else [[1] * len(row) for row in ids]
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.tokenizer.piece_to_id(tokens)
        return [self.tokenizer.piece_to_id(token) for token in tokens]

    # ----- ids -> text -------------------------------------------------------------------------------------------
    def _known(self, ids: Sequence[int] | int) -> list[int]:
        """Ids the SentencePiece model has (a model vocabulary larger than the tokenizer's, e.g. llava-hf's added
        ``<image>``, decodes its extra ids to nothing)."""
        ids = [ids] if isinstance(ids, int) else list(ids)
        return [int(token) for token in ids if 0 <= int(token) < self.tokenizer.vocab_size]

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(self._known(ids), skip_special=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list[str]:
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.tokenizer.id_to_piece(token) for token in self._known(ids) if token not in special]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.tokenizer.decode_pieces(tokens)

    # ----- chat --------------------------------------------------------------------------------------------------
    def render(self, conversation: Sequence[Any], *, add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids of a chat conversation in the folder's template (what ``MFRSVLMProcessor.prompt_ids`` gives,
        with the image placeholder id where the image goes)."""
        turns = [{"role": turn["role"], "content": turn.get("content") or ""} for turn in conversation]
        has_image = any(IMAGE_PLACEHOLDER in str(turn["content"]) for turn in turns)
        template, rounds = template_and_rounds(self.processor.template, turns, "messages", has_image=has_image)
        return self.encode(prompt_text(template, rounds, open_turn=add_generation_prompt))

    def apply_chat_template(self, messages: list[Any], tools: list[dict[str, Any]] | None = None,
                            **kwargs: Any) -> str | list[int]:
        if tools:
            raise ValueError("rsfuse tokenizer: tools are not supported by MF-RSVLM's conversation templates")
        conversation = kwargs.get("conversation") or messages
        ids = self.render(conversation, add_generation_prompt=kwargs.get("add_generation_prompt", True))
        return ids if kwargs.get("tokenize", True) else self.decode(ids)


class RsfuseRenderer(BaseRenderer[RsfuseTokenizer]):
    """vLLM's chat renderer for ``tokenizer_mode="rsfuse"``: the messages parsed by vLLM (images collected, each
    image part written as ``<image>`` in its turn), then the folder's conversation template (`RsfuseTokenizer.render`)."""

    def _prompt(self, conversation: list[Any], mm_data: Any, mm_uuids: Any, params: Any) -> Any:
        kwargs = params.get_apply_chat_template_kwargs()
        ids = self.get_tokenizer().render(conversation, add_generation_prompt=kwargs.get("add_generation_prompt", True))
        prompt = parse_dec_only_prompt(ids)
        if mm_data is not None:
            prompt["multi_modal_data"] = mm_data
        if mm_uuids is not None:
            prompt["multi_modal_uuids"] = mm_uuids
        return prompt

    def render_messages(self, messages: list[Any], params: Any) -> tuple[list[Any], Any]:
        conversation, mm_data, mm_uuids = parse_chat_messages(
            messages, self.model_config, content_format="string", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return conversation, self._prompt(conversation, mm_data, mm_uuids, params)

    async def render_messages_async(self, messages: list[Any], params: Any) -> tuple[list[Any], Any]:
        conversation, mm_data, mm_uuids = await parse_chat_messages_async(
            messages, self.model_config, content_format="string", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return conversation, self._prompt(conversation, mm_data, mm_uuids, params)
