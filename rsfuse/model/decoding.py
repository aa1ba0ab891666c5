"""``MFRSVLM.generate``: a whole batch decoded to the end (docs/DESIGN_NOTES.md §1.11).

With the cache (the default), one ``GenerationSession.add`` for the whole batch, then ``step`` with a ``poll`` every
``sync_every`` steps; ``compile=True`` sizes the cache in buckets of ``COMPILED_LENGTH_BUCKET`` positions and reuses
the model's last compiled session, so prompts of other lengths do not recompile.

``use_cache=False`` reproduces the reference implementation's cost instead: every step re-runs the full model,
re-encoding all views (59 tower passes per image in the paper configuration) — a benchmark baseline.
"""

from typing import TYPE_CHECKING

import torch
from einops import rearrange

from rsfuse._typing import Int, Tensor
from rsfuse.model.generation import GenerationSession
from rsfuse.model.sampling import SamplingParams, sample_tokens

if TYPE_CHECKING:
    from rsfuse.model.mfrsvlm import MFRSVLM

__all__ = ["COMPILED_LENGTH_BUCKET", "generate"]


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
    compile: bool = False,
    sync_every: int = 8,
) -> Int[Tensor, "batch new"]:
    """``MFRSVLM.generate``: new token ids ``[B, T]``, ``T <= max_new_tokens`` (fewer when every sample hit EOS
    early); each row stops at its first EOS (kept) and holds ``pad_token_id`` after it. EOS is checked on the host
    every ``sync_every`` steps. ``compile=True`` compiles the decode step (``torch.compile``; CUDA graphs on a GPU)
    and gives the greedy tokens of ``compile=False``; ``use_cache=False`` re-runs the whole model every step."""
    eos = None if eos_token_id is None else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_token_ids=eos)
    pad = model.pad_token_id if pad_token_id is None else int(pad_token_id)
    if not use_cache:
        return _generate_without_cache(model, pixel_values, input_ids, attention_mask, params, pad, image_mask, generator)
    batch = input_ids.shape[0]
    visual = model.config.num_visual_tokens if pixel_values is not None else 0
    needed = input_ids.shape[1] + visual + max_new_tokens  # an upper bound: the layout drops placeholders
    if compile:  # fixed cache lengths, so prompts of other lengths reuse the compiled step instead of recompiling
        needed = -(-needed // COMPILED_LENGTH_BUCKET) * COMPILED_LENGTH_BUCKET
    max_length = min(needed, model.config.llm.max_position_embeddings)
    session = _session_for(model, batch=batch, max_length=max_length, compile=compile, generator=generator, pad=pad)
    rows = session.add(pixel_values, input_ids, attention_mask, params=params, image_mask=image_mask)
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


COMPILED_LENGTH_BUCKET = 128
"""``generate(compile=True)`` sizes its cache in multiples of this many positions."""


def _session_for(model, *, batch: int, max_length: int, compile: bool, generator, pad: int) -> GenerationSession:
    """A new session; with ``compile``, the model's last compiled session when it has the same shape (its buffers,
    hence a GPU's captured CUDA graphs, are reused across ``generate`` calls)."""
    if not compile:
        return GenerationSession(model, max_batch=batch, max_length=max_length, generator=generator, pad_token_id=pad)
    key = (batch, max_length, pad, model.dtype, model.device)
    cached = getattr(model, "_compiled_session", None)
    if cached is not None and cached[0] == key:
        cached[1].reset(generator=generator)
        return cached[1]
    session = GenerationSession(
        model, max_batch=batch, max_length=max_length, compile=True, generator=generator, pad_token_id=pad
    )
    model._compiled_session = (key, session)
    return session


def _generate_without_cache(model, pixel_values, input_ids, attention_mask, params, pad, image_mask, generator):
    """The reference way: append each token and re-run the whole model, images included."""
    eos = torch.tensor(
        list(params.eos_token_ids) if params.eos_token_ids is not None else _model_eos(model), dtype=torch.long,
        device=input_ids.device,
    )
    ids = input_ids
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    batch = ids.shape[0]
    temperature = torch.full((batch,), float(params.temperature), device=ids.device)
    top_p = torch.full((batch,), float(params.top_p), device=ids.device)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    generated = []
    model.check_token_ids(ids, mask)
    for _ in range(params.max_new_tokens):
        layout, embeds, injection = model.prefill_inputs(
            pixel_values, ids, mask, image_mask=image_mask, padding_side="left"
        )
        logits = model.llm(
            inputs_embeds=embeds, attention_mask=layout.attention_mask, position_ids=layout.position_ids,
            injection=injection, logits_to_keep=1,
        ).logits[:, -1]
        token = torch.where(done, pad, sample_tokens(logits, temperature, top_p, generator=generator))
        generated.append(token)
        done = done | torch.isin(token, eos)
        if bool(done.all()):
            break
        ids = torch.cat([ids, rearrange(token, "b -> b 1")], dim=1)
        mask = torch.cat([mask, torch.ones_like(rearrange(token, "b -> b 1"), dtype=torch.bool)], dim=1)
    return torch.stack(generated, dim=1)


def _model_eos(model) -> list[int]:
    eos = model.config.llm.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(token) for token in eos]
