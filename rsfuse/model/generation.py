"""Autoregressive generation for ``MFRSVLM`` (DESIGN §1.11).

With the KV cache (default; a ``StaticKVCache`` sized for prompt + new tokens): one prefill over ``[visual][left padding][prompt]`` with the detail injectors active,
then one decoder call per new token that reads the cache (the vision tower and the canvas are never called again;
the injected visual keys/values are in the cache). Prompts may arrive left- or right-padded (and with or without
the −200 image placeholder): they are re-laid out left-padded first.

``use_cache=False`` reproduces the reference implementation's cost: every step re-runs the full model, re-encoding
all views (59 tower passes per image in the paper configuration) — useful as a benchmark baseline only.

Decoding: greedy at ``temperature == 0``, otherwise temperature + nucleus (``top_p``) sampling drawn with
``generator``. A sample stops at its first EOS; later positions hold ``pad_token_id``; the loop ends when every
sample is done (one host sync per step).
"""

import dataclasses
from typing import TYPE_CHECKING

import torch
from einops import rearrange

from rsfuse._typing import Float, Int, Tensor
from rsfuse.llm.cache import StaticKVCache

if TYPE_CHECKING:
    from rsfuse.model.mfrsvlm import MFRSVLM

__all__ = ["generate", "next_token"]


def _eos_ids(model: "MFRSVLM", eos_token_id: int | list[int] | None) -> list[int]:
    if eos_token_id is None:
        eos_token_id = model.config.llm.eos_token_id
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(token) for token in eos_token_id]


def next_token(
    logits: Float[Tensor, "batch vocab"],
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> Int[Tensor, " batch"]:
    """Greedy (``temperature == 0``) or temperature + top-p sampling of one token per row."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, sorted_ids, sorted_probs)
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return rearrange(choice, "b 1 -> b")


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature >= 0.0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")


@torch.no_grad()
def generate(
    model: "MFRSVLM",
    pixel_values: Tensor | None,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    image_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Int[Tensor, "batch new"]:
    """New token ids ``[B, T]``, ``T <= max_new_tokens`` (fewer when every sample hit EOS early)."""
    _check_sampling(max_new_tokens, temperature, top_p)
    eos = torch.tensor(_eos_ids(model, eos_token_id), dtype=torch.long, device=input_ids.device)
    pad = model.pad_token_id if pad_token_id is None else int(pad_token_id)
    batch = input_ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    generated: list[Tensor] = []
    if use_cache:
        sequence, stacks, selected = model.prepare_inputs(
            pixel_values, input_ids, attention_mask, image_mask=image_mask, pad_left=True
        )
        cache = StaticKVCache.for_model(
            model.config.llm,
            batch_size=batch,
            max_length=sequence.inputs_embeds.shape[1] + max_new_tokens,
            dtype=sequence.inputs_embeds.dtype,
            device=sequence.inputs_embeds.device,
        )
        mask = sequence.attention_mask
        position = sequence.position_ids[:, -1:]
        # Without padding or masked visual positions no mask is needed at all (the decoder's causal fast path).
        unpadded = bool(mask.all())
        prefill = dataclasses.replace(sequence, attention_mask=None) if unpadded else sequence
        output = model.run_decoder(prefill, stacks, selected, cache=cache, logits_to_keep=1)
    else:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        ids, mask = input_ids, attention_mask.to(torch.bool)
        sequence, stacks, selected = model.prepare_inputs(pixel_values, ids, mask, image_mask=image_mask, pad_left=True)
        output = model.run_decoder(sequence, stacks, selected, logits_to_keep=1)
    for step in range(max_new_tokens):
        token = next_token(output.logits[:, -1], temperature=temperature, top_p=top_p, generator=generator)
        token = torch.where(done, pad, token)
        generated.append(token)
        done = done | torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        column = rearrange(token, "b -> b 1")
        if use_cache:
            mask = torch.cat([mask, torch.ones_like(column, dtype=torch.bool)], dim=1)
            position = position + 1
            output = model.llm(
                column,
                attention_mask=None if unpadded else mask,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
            )
        else:
            # The reference way: append the token and re-run everything, images included.
            ids = torch.cat([ids, column], dim=1)
            mask = torch.cat([mask, torch.ones_like(column, dtype=torch.bool)], dim=1)
            sequence, stacks, selected = model.prepare_inputs(
                pixel_values, ids, mask, image_mask=image_mask, pad_left=True
            )
            output = model.run_decoder(sequence, stacks, selected, logits_to_keep=1)
    return torch.stack(generated, dim=1)
