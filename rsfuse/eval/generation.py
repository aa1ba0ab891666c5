"""Answers of a model to evaluation records: prompts ordered by length, batches through ``MFRSVLMProcessor`` (the input
path ``predict`` and ``serve`` use), greedy KV-cached ``model.generate``, answers decoded up to EOS.

The model is used through its public methods only (``generate``, ``config``, ``device``, ``dtype``,
``num_visual_tokens``); nothing here imports the model classes.
"""

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from rsfuse.options import DEFAULT_TEMPLATE

__all__ = [
    "BAD_IMAGE",
    "TOO_LONG",
    "EvalInputError",
    "encode_prompt",
    "length_order",
    "decoder_length",
    "context_limit",
    "answerable",
    "generate_batches",
    "generate_predictions",
]

BAD_IMAGE = "bad_image"  # an image that cannot be read (skip_bad=true)
TOO_LONG = "too_long"  # prompt + max_new_tokens beyond the decoder's max_position_embeddings


class EvalInputError(ValueError):
    """A record cannot be evaluated (an unreadable image, a prompt beyond the context, an unreadable data file); the
    message names the file and the record."""


def encode_prompt(record: Mapping[str, Any], tokenizer, template: str) -> list[int]:
    """Token ids of the generation prompt of one record (BOS first, -200 where the image goes), before layout:
    ``MFRSVLMProcessor``'s prompt rule. Used to order and size the prompts; the batches themselves go through the
    processor."""
    from rsfuse.processor import prompt_token_ids

    return prompt_token_ids(str(record["prompt"]), tokenizer, template)


def length_order(lengths: Sequence[int]) -> list[int]:
    """Positions sorted longest first (ties keep their order): batches of similar lengths waste little padding, and a
    run that runs out of memory does so in its first batch."""
    return sorted(range(len(lengths)), key=lambda position: (-lengths[position], position))


def decoder_length(prompt: Sequence[int], model) -> int:
    """Positions the decoder's sequence takes for a prompt with its image, as `MFRSVLM.generate` counts them against
    ``max_position_embeddings``: the width of the layout ``MFRSVLMProcessor`` gives it (the one producer)."""
    from rsfuse.processor.batch import SampleCollator

    return SampleCollator.from_config(model.config, padding_side="left").sequence_length(prompt, has_image=True)


def context_limit(model) -> int:
    """The decoder's ``max_position_embeddings``."""
    return int(model.config.llm.max_position_embeddings)


def answerable(
    records: Sequence[Mapping[str, Any]], model, tokenizer, *, template: str, max_new_tokens: int, refuse: bool = False
) -> tuple[list[tuple[Mapping[str, Any], list[int]]], list[dict]]:
    """``(items, unanswered)``: ``(record, prompt ids)`` of the records whose decoder length plus ``max_new_tokens``
    fits ``max_position_embeddings``, longest prompt first; the others as ``{id, reason: "too_long", detail}``
    entries, or with ``refuse`` an `EvalInputError` naming the first of them."""
    prompts = [encode_prompt(record, tokenizer, template) for record in records]
    lengths = [decoder_length(prompt, model) for prompt in prompts]
    limit = context_limit(model)
    overlong = [i for i, length in enumerate(lengths) if length + max_new_tokens > limit]
    if overlong and refuse:
        first = overlong[0]
        raise EvalInputError(
            f"{len(overlong)} of {len(records)} records need more positions than the decoder's max_position_embeddings "
            f"{limit} (first: record {str(records[first]['id'])!r}, prompt {lengths[first]} positions + max_new_tokens "
            f"{max_new_tokens}); lower max_new_tokens, or pass too_long=count to skip and count them"
        )
    unanswered = [{"id": str(records[i]["id"]), "reason": TOO_LONG,
                   "detail": f"prompt {lengths[i]} positions + max_new_tokens {max_new_tokens} > {limit}"}
                  for i in overlong]
    fitting = [i for i in length_order([len(prompt) for prompt in prompts]) if lengths[i] + max_new_tokens <= limit]
    return [(records[i], prompts[i]) for i in fitting], unanswered


def _decode(tokens: list[int], tokenizer, eos_id: int) -> str:
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return tokenizer.decode(tokens).strip()


def _load_images(chunk, skip_bad: bool, skipped: list[dict]):
    """``(kept items, their images, first unreadable image's error or None)``; with ``skip_bad`` the unreadable ones
    are added to ``skipped`` instead of being reported as the error."""
    from rsfuse.data import load_image
    from rsfuse.data.images import ImageLoadError

    kept, images, failure = [], [], None
    for record, prompt in chunk:
        try:
            images.append(load_image(record["image_path"]))
        except ImageLoadError as error:
            if skip_bad:
                skipped.append({"id": str(record["id"]), "reason": BAD_IMAGE, "detail": str(error)})
            elif failure is None:
                failure = EvalInputError(f"{error} (record {str(record['id'])!r}); pass skip_bad=true to skip and "
                                         "count unreadable images")
            continue
        kept.append((record, prompt))
    return kept, images, failure


def generate_batches(
    model,
    tokenizer,
    items: Sequence[tuple[Mapping[str, Any], list[int]]],
    *,
    batch_size: int,
    max_new_tokens: int,
    template: str = DEFAULT_TEMPLATE,
    progress: bool = False,
    skip_bad: bool = False,
    skipped: list[dict] | None = None,
) -> Iterator[list[tuple[Mapping[str, Any], str]]]:
    """``items`` are ``(record, prompt ids)`` in the order to batch them; one list of answers per batch.

    Each batch is ``processor(images=[...], text=[prompts])`` of the model's `MFRSVLMProcessor` (``template``) fed
    to ``model.generate(**inputs)``. An unreadable image is skipped (``skip_bad``, appended to ``skipped``) or raises
    `EvalInputError` naming the file and the record, after the rest of its batch has been answered and yielded.
    """
    from rsfuse.processor import MFRSVLMProcessor

    processor = MFRSVLMProcessor.from_config(model.config, tokenizer, template=template)
    skipped = [] if skipped is None else skipped
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="eval", unit="q", file=sys.stderr)
    try:
        for start in range(0, len(items), batch_size):
            chunk, images, failure = _load_images(items[start : start + batch_size], skip_bad, skipped)
            if chunk:
                inputs = processor(images=images, text=[str(record["prompt"]) for record, _ in chunk])
                new_tokens = model.generate(
                    **inputs.to(model.device, model.dtype),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_id,
                )
                yield [(record, _decode(tokens, tokenizer, tokenizer.eos_id))
                       for (record, _), tokens in zip(chunk, new_tokens.tolist())]
            if failure is not None:
                raise failure
            if bar is not None:
                bar.update(len(items[start : start + batch_size]))
    finally:
        if bar is not None:
            bar.close()


@torch.no_grad()
def generate_predictions(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    template: str = DEFAULT_TEMPLATE,
    progress: bool = False,
) -> Iterator[list[tuple[Mapping[str, Any], str]]]:
    """Yield ``[(record, prediction), ...]`` one batch at a time: greedy, KV-cached, left-padded prompts, batched by
    prompt length (longest first), so batches do not come in the order of ``records``."""
    prompts = [encode_prompt(record, tokenizer, template) for record in records]
    order = length_order([len(prompt) for prompt in prompts])
    yield from generate_batches(model, tokenizer, [(records[i], prompts[i]) for i in order], batch_size=batch_size,
                                max_new_tokens=max_new_tokens, template=template, progress=progress)
