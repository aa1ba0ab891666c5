"""Assembling the decoder's input sequence from text ids and projected visual tokens (DESIGN §1.9).

Two placements:

* ``"prefix"`` (MF-RSVLM): ``[visual N][text]``. The image placeholder (−200) is removed from the text wherever it
  stands. The visual slice is ``0:N`` for every sample, so one fixed slice serves the injectors.
* ``"token"`` (LLaVA): the visual tokens are spliced where the placeholder stood (after the text for a sample without
  one); the slice differs per sample and is returned as ``visual_positions [B, N]``.

Two paddings, both without host synchronisation (a stable sort moves the real tokens, in order, to one side):

* training (``pad_left=False``): real tokens first, padding last — ``[visual][text][pad]``;
* generation (``pad_left=True``): ``[visual][pad][prompt]``, so new tokens append after the last real token.

Visual positions of samples without an image are masked out of attention; position ids are ``cumsum(mask) − 1``,
so a text-only sample in a mixed batch sees exactly what it would see alone. Labels at visual and padding positions
are −100.
"""

from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from rsfuse._typing import Bool, Float, Int, Tensor

__all__ = ["AssembledSequence", "CompactText", "compact_text", "assemble_sequence", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class CompactText:
    """Text with the placeholder removed and padding moved to one side (same length as the input)."""

    input_ids: Int[Tensor, "batch text"]
    attention_mask: Bool[Tensor, "batch text"]
    labels: Int[Tensor, "batch text"] | None
    image_slot: Int[Tensor, " batch"]
    """Index in the compacted text where the placeholder stood; without one: the end of the text (right padding) or
    the start (left padding)."""


@dataclass
class AssembledSequence:
    """Decoder inputs: embeddings, bool attention mask, position ids, labels, and where the visual tokens sit."""

    inputs_embeds: Float[Tensor, "batch sequence dim"]
    attention_mask: Bool[Tensor, "batch sequence"]
    position_ids: Int[Tensor, "batch sequence"]
    labels: Int[Tensor, "batch sequence"] | None
    visual_slice: slice | None
    visual_positions: Int[Tensor, "batch visual"] | None


def compact_text(
    input_ids: Int[Tensor, "batch text"],
    attention_mask: Tensor | None,
    labels: Int[Tensor, "batch text"] | None,
    *,
    image_token_index: int,
    pad_token_id: int,
    pad_left: bool,
) -> CompactText:
    """Drop image placeholders and move padding to the left (``pad_left``) or right, keeping the order of real tokens."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
        )
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    attended = attention_mask.to(torch.bool)
    placeholder = attended & (input_ids == image_token_index)
    real = attended & ~placeholder
    before_placeholder = real & (placeholder.long().cumsum(dim=1) == 0)
    sort_key = real.long() if pad_left else (~real).long()
    order = torch.sort(sort_key, dim=1, stable=True).indices
    mask = real.gather(1, order)
    ids = input_ids.gather(1, order).masked_fill(~mask, pad_token_id)
    padding = (~real).long().sum(dim=1)
    slot = before_placeholder.long().sum(dim=1)
    if pad_left:
        # With a placeholder the slot is shifted by the pads; without one the (masked) visual tokens go first, so the
        # last column is always the last prompt token: [visual][pad][prompt].
        has_placeholder = placeholder.any(dim=1)
        slot = torch.where(has_placeholder, slot + padding, torch.zeros_like(slot))
    compact_labels = None
    if labels is not None:
        compact_labels = labels.gather(1, order).masked_fill(~mask, IGNORE_INDEX)
    return CompactText(input_ids=ids, attention_mask=mask, labels=compact_labels, image_slot=slot)


def position_ids_from_mask(mask: Bool[Tensor, "batch sequence"]) -> Int[Tensor, "batch sequence"]:
    """``cumsum(mask) − 1`` clamped at 0: real tokens numbered from 0 whatever the padding."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


def assemble_sequence(
    text: CompactText,
    text_embeds: Float[Tensor, "batch text dim"],
    visual_embeds: Float[Tensor, "batch visual dim"] | None,
    image_mask: Bool[Tensor, " batch"] | None,
    *,
    placement: str,
) -> AssembledSequence:
    """Place ``visual_embeds`` (None: a text-only batch) with ``text_embeds``; see the module docstring."""
    if visual_embeds is None:
        return AssembledSequence(
            inputs_embeds=text_embeds,
            attention_mask=text.attention_mask,
            position_ids=position_ids_from_mask(text.attention_mask),
            labels=text.labels,
            visual_slice=None,
            visual_positions=None,
        )
    batch, tokens, _ = visual_embeds.shape
    device = text_embeds.device
    if image_mask is None:
        image_mask = torch.ones(batch, dtype=torch.bool, device=device)
    visual_mask = repeat(image_mask.to(torch.bool), "b -> b n", n=tokens)
    visual_labels = torch.full((batch, tokens), IGNORE_INDEX, dtype=torch.long, device=device)
    if placement == "prefix":
        mask = torch.cat([visual_mask, text.attention_mask], dim=1)
        labels = None if text.labels is None else torch.cat([visual_labels, text.labels], dim=1)
        return AssembledSequence(
            inputs_embeds=torch.cat([visual_embeds.to(text_embeds.dtype), text_embeds], dim=1),
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            labels=labels,
            visual_slice=slice(0, tokens),
            visual_positions=None,
        )
    if placement != "token":
        raise ValueError(f"image placement must be 'prefix' or 'token', got {placement!r}")
    text_length = text_embeds.shape[1]
    columns = rearrange(torch.arange(text_length + tokens, device=device), "j -> 1 j")
    slot = rearrange(text.image_slot, "b -> b 1")
    is_visual = (columns >= slot) & (columns < slot + tokens)
    text_index = torch.where(columns < slot, columns, columns - tokens).clamp(0, text_length - 1)
    visual_index = (columns - slot).clamp(0, tokens - 1)
    dim = text_embeds.shape[-1]
    embeds = torch.where(
        rearrange(is_visual, "b j -> b j 1"),
        visual_embeds.to(text_embeds.dtype).gather(1, repeat(visual_index, "b j -> b j d", d=dim)),
        text_embeds.gather(1, repeat(text_index, "b j -> b j d", d=dim)),
    )
    mask = torch.where(is_visual, visual_mask.gather(1, visual_index), text.attention_mask.gather(1, text_index))
    labels = None
    if text.labels is not None:
        labels = torch.where(is_visual, IGNORE_INDEX, text.labels.gather(1, text_index))
    positions = slot + rearrange(torch.arange(tokens, device=device), "n -> 1 n")
    return AssembledSequence(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        labels=labels,
        visual_slice=None,
        visual_positions=positions,
    )
