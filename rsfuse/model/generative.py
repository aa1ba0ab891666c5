"""``MFRSVLM``'s generation face: what `rsfuse.generation.GenerativeModel` names (``decoder_config``,
``embed_prompts``, ``next_token_logits``) and ``generate``, on top of the model's ``prefill_inputs`` and decoder. A
mixin so the session depends on the protocol only and ``MFRSVLM`` stays one idea per file."""

from typing import Any

from rsfuse._typing import Tensor
from rsfuse.generation import PromptEmbeddings, generate
from rsfuse.injection.visual import DecoderInjection
from rsfuse.llm.cache import KVCache
from rsfuse.llm.config import LlamaConfig

__all__ = ["GenerativeMixin"]


class GenerativeMixin:
    """Generation methods of a model with ``config.llm``, ``llm``, ``prefill_inputs``, ``check_token_ids`` and
    ``compiled_sessions`` (``MFRSVLM``)."""

    @property
    def decoder_config(self) -> LlamaConfig:
        return self.config.llm

    def embed_prompts(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        image_mask: Tensor | None = None,
        visual_positions: Tensor | None = None,
    ) -> PromptEmbeddings:
        """Prompts for generation: token ids checked against the vocabulary, laid out with left padding (or as the
        processor laid them out, ``visual_positions`` given), embedded with the images' global tokens, and the
        prefill's injection. One host sync (the checks)."""
        self.check_token_ids(input_ids, attention_mask)
        if visual_positions is not None and attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("generate: the prompts are right-padded (processor(..., padding_side='right')); "
                             "generation appends after each row's last position and needs left padding")
        layout, embeds, injection = self.prefill_inputs(
            pixel_values, input_ids, attention_mask, image_mask=image_mask, visual_positions=visual_positions,
            padding_side="left",
        )
        return PromptEmbeddings(embeds, layout.attention_mask, layout.position_ids, injection)

    def next_token_logits(
        self,
        *,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None,
        position_ids: Tensor,
        cache: KVCache | None = None,
        cache_position: Tensor | None = None,
        cache_rows: Tensor | None = None,
        injection: DecoderInjection | None = None,
    ) -> Tensor:
        """The decoder's logits ``[B, V]`` of each row's last position (see ``LlamaForCausalLM.forward``)."""
        output = self.llm(
            input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, cache_position=cache_position, cache_rows=cache_rows, injection=injection,
            logits_to_keep=1,
        )
        return output.logits[:, -1]

    def generate(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        compile: bool = False,
        **options: Any,
    ) -> Tensor:
        """New token ids ``[B, T]``; ``options``: ``pad_token_id``, ``image_mask``, ``generator``, ``use_cache``,
        ``sync_every`` (see `rsfuse.generation.generate`). ``compile=True`` reuses ``self.compiled_sessions``."""
        return generate(
            self, pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, eos_token_id=eos_token_id, compile=compile, sessions=self.compiled_sessions, **options,
        )
