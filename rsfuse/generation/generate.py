"""``generate``: a whole batch decoded to the end (docs/DESIGN_NOTES.md §1.11); ``MFRSVLM.generate`` calls it.

With the cache (the default), one ``GenerationSession.add`` for the whole batch, then ``step`` with a ``poll`` every
``sync_every`` steps. ``compile=True`` sizes the cache in buckets of ``COMPILED_LENGTH_BUCKET`` positions and takes
the session from ``sessions`` (a `CompiledSessions`, e.g. the model's ``compiled_sessions``), so prompts of other
lengths and later calls reuse the compiled step (a GPU's captured graphs) instead of recompiling.

``use_cache=False`` reproduces the reference implementation's cost instead: every step re-runs the full model,
re-encoding all views (59 tower passes per image in the paper configuration) — a benchmark baseline.
"""

from typing import Any

import torch
from einops import rearrange

from rsfuse._typing import Int, Tensor
from rsfuse.generation.sampling import SamplingParams, draw_seed, sample_tokens
from rsfuse.generation.session import GenerationSession, GenerativeModel

__all__ = ["COMPILED_LENGTH_BUCKET", "CompiledSessions", "generate"]

COMPILED_LENGTH_BUCKET = 128
"""``generate(compile=True)`` sizes its cache in multiples of this many positions."""


class CompiledSessions:
    """The compiled ``GenerationSession``s of one model, one per shape (batch, cache length, pad id, dtype, device):
    what ``generate(compile=True)`` reuses. ``clear()`` drops them (their caches and compiled graphs)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple, GenerationSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, model: GenerativeModel, *, batch: int, max_length: int, pad: int) -> GenerationSession:
        """The session of this shape, emptied for reuse, or a new compiled one."""
        key = (batch, max_length, pad, model.dtype, model.device)
        session = self._sessions.get(key)
        if session is None:
            session = GenerationSession(model, max_batch=batch, max_length=max_length, compile=True, pad_token_id=pad)
            self._sessions[key] = session
        else:
            session.reset()
        return session

    def clear(self) -> None:
        self._sessions.clear()


@torch.no_grad()
def generate(
    model: GenerativeModel,
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
    compile: bool = False,
    sessions: CompiledSessions | None = None,
    sync_every: int = 8,
    **inputs: Any,
) -> Int[Tensor, "batch new"]:
    """New token ids ``[B, T]``, ``T <= max_new_tokens`` (fewer when every sample hit EOS early); each row stops at
    its first EOS (kept) and holds ``pad_token_id`` after it. EOS is checked on the host every ``sync_every`` steps.
    ``compile=True`` compiles the decode step (``torch.compile``; CUDA graphs on a GPU) and gives the greedy tokens
    of ``compile=False``; ``use_cache=False`` re-runs the whole model every step. Sampled rows draw their seeds from
    ``generator`` (None: torch's global generator). ``inputs``: the processor's other outputs."""
    eos = None if eos_token_id is None else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_token_ids=eos)
    pad = model.decoder_config.pad_id if pad_token_id is None else int(pad_token_id)
    if not use_cache:
        return _generate_without_cache(model, pixel_values, input_ids, attention_mask, params, pad, image_mask,
                                       generator, inputs)
    batch = input_ids.shape[0]
    prompts = model.embed_prompts(pixel_values, input_ids, attention_mask, image_mask=image_mask, **inputs)
    needed = prompts.inputs_embeds.shape[1] + max_new_tokens
    if compile:  # fixed cache lengths, so prompts of other lengths reuse the compiled step instead of recompiling
        needed = -(-needed // COMPILED_LENGTH_BUCKET) * COMPILED_LENGTH_BUCKET
    max_length = min(needed, model.decoder_config.max_position_embeddings)
    if compile:
        session = (sessions if sessions is not None else CompiledSessions()).get(
            model, batch=batch, max_length=max_length, pad=pad)
        session.generator = generator
    else:
        session = GenerationSession(model, max_batch=batch, max_length=max_length, generator=generator,
                                    pad_token_id=pad)
    rows = session.add_prompts(prompts, params=params)
    for step in range(1, max_new_tokens):
        if step % sync_every == 0:
            session.poll()
            if session.all_done:
                break
        session.step()
    session.poll()
    tokens = [session.tokens(row) for row in rows]
    width = max(len(row) for row in tokens)
    out = torch.full((batch, width), pad, dtype=torch.long)
    for index, row in enumerate(tokens):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(input_ids.device)


def _generate_without_cache(model, pixel_values, input_ids, attention_mask, params, pad, image_mask, generator, inputs):
    """The reference way: append each token and re-run the whole model, images included."""
    eos_ids = params.eos_token_ids if params.eos_token_ids is not None else model.decoder_config.eos_token_ids
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=input_ids.device)
    ids = input_ids
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    batch = ids.shape[0]
    temperature = torch.full((batch,), float(params.temperature), device=ids.device)
    top_p = torch.full((batch,), float(params.top_p), device=ids.device)
    seeds = torch.tensor([draw_seed(generator) for _ in range(batch)], dtype=torch.long, device=ids.device)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    generated = []
    for step in range(params.max_new_tokens):
        prompts = model.embed_prompts(pixel_values, ids, mask, image_mask=image_mask, **inputs)
        logits = model.next_token_logits(
            inputs_embeds=prompts.inputs_embeds, attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids, injection=prompts.injection,
        )
        steps = torch.full((batch,), step, dtype=torch.long, device=ids.device)
        token = torch.where(done, pad, sample_tokens(logits, temperature, top_p, seeds=seeds, steps=steps))
        generated.append(token)
        done = done | torch.isin(token, eos)
        if bool(done.all()):
            break
        ids = torch.cat([ids, rearrange(token, "b -> b 1")], dim=1)
        mask = torch.cat([mask, torch.ones_like(rearrange(token, "b -> b 1"), dtype=torch.bool)], dim=1)
    return torch.stack(generated, dim=1)
