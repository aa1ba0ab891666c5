"""Where every token of a multimodal sequence goes (docs/DESIGN_NOTES.md §1, the sequence): one pure function on token
ids. ``MFRSVLMProcessor`` (its calls, ``pack`` and the training collate) is the one producer of layouts: it returns
the laid-out ids with ``visual_positions`` beside them, and the model then only scatters features there.
``MFRSVLM`` calls this function itself only at its boundary, for raw ids that come without ``visual_positions``
(and laying out a sequence that is already laid out changes nothing).

The laid-out ``input_ids`` hold ``image_token_id`` at each of the ``N`` visual slots; the model embeds the text and
scatters the projected image features into those slots, so prefill is known, not guessed.

Two placements:

* ``"prefix"`` (MF-RSVLM): ``[visual N][text]``. Image placeholders are removed from the text wherever they stand.
* ``"token"`` (LLaVA): the visual slots replace the first placeholder (after the text for a sample without one).

Input ids may carry the placeholder once (LLaVA's −200 convention, ``IMAGE_TOKEN_INDEX``, which also means the image
token when the model's is an in-vocabulary id), ``N`` times (the llava-hf convention, or the output of this
function), or not at all; only the first attended placeholder marks the slot. Laying out a
sequence that is already laid out returns it unchanged (same length, same columns).

Two paddings, both without host synchronisation (a stable sort moves the real tokens, in order, to one side):

* ``padding_side="right"`` (training, scoring): ``[visual][text][pad]``;
* ``padding_side="left"`` (generation): ``[visual][pad][prompt]``, so new tokens append after the last real token.

When the batch has images, every row gets ``N`` visual slots; those of rows without an image (``image_mask``) are
masked out of attention. Position ids are ``cumsum(mask) − 1``, so a text-only sample in a mixed batch sees exactly
what it would see alone. Labels at visual and padding positions are ``IGNORE_INDEX``.
"""

from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from rsfuse._typing import Bool, Int, Tensor
from rsfuse.llm.model import IGNORE_INDEX
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX
from rsfuse.options import IMAGE_PLACEMENTS, PADDING_SIDES, check_option

__all__ = ["IGNORE_INDEX", "SequenceLayout", "layout_sequence", "position_ids_from_mask"]

@dataclass
class SequenceLayout:
    """Decoder inputs in token space: ids with ``image_token_id`` at the visual slots, bool attention mask, position
    ids, labels (or None), and the ``[B, N]`` sequence indices of the visual slots (None for a text-only batch)."""

    input_ids: Int[Tensor, "batch sequence"]
    attention_mask: Bool[Tensor, "batch sequence"]
    position_ids: Int[Tensor, "batch sequence"]
    labels: Int[Tensor, "batch sequence"] | None
    visual_positions: Int[Tensor, "batch visual"] | None


def position_ids_from_mask(mask: Bool[Tensor, "batch sequence"]) -> Int[Tensor, "batch sequence"]:
    """``cumsum(mask) − 1`` clamped at 0: real tokens numbered from 0 whatever the padding."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


def _compact(input_ids, attended, labels, *, image_token_id, pad_token_id, pad_left):
    """Drop placeholders and move padding to one side; returns ids, mask, labels and the slot of the first placeholder
    in the compacted text (without one: the end of the text with right padding, the start with left padding; with
    left padding a placeholder before any real token also gives the start)."""
    is_image = attended & (input_ids == image_token_id)
    first_image = is_image & (is_image.long().cumsum(dim=1) == 1)
    real = attended & ~is_image
    before_placeholder = real & (is_image.long().cumsum(dim=1) == 0)
    sort_key = real.long() if pad_left else (~real).long()
    order = torch.sort(sort_key, dim=1, stable=True).indices
    mask = real.gather(1, order)
    ids = input_ids.gather(1, order).masked_fill(~mask, pad_token_id)
    slot = before_placeholder.long().sum(dim=1)
    if pad_left:
        has_placeholder = first_image.any(dim=1)
        padding = (~real).long().sum(dim=1)
        # A placeholder with real tokens before it: [pad][before][visual][after]; at the very front (or none):
        # [visual][pad][prompt], so new tokens always append after the last real token.
        slot = torch.where(has_placeholder & (slot > 0), slot + padding, torch.zeros_like(slot))
    compact_labels = None if labels is None else labels.gather(1, order).masked_fill(~mask, IGNORE_INDEX)
    return ids, mask, compact_labels, slot


def layout_sequence(
    input_ids: Int[Tensor, "batch text"],
    attention_mask: Tensor | None = None,
    labels: Int[Tensor, "batch text"] | None = None,
    *,
    image_mask: Bool[Tensor, " batch"] | None,
    num_visual_tokens: int,
    image_token_id: int,
    pad_token_id: int,
    placement: str,
    padding_side: str,
) -> SequenceLayout:
    """Lay out a batch; ``image_mask`` marks the rows with an image (None: a text-only batch). See the module doc."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
    check_option(placement, IMAGE_PLACEMENTS, "image placement")
    check_option(padding_side, PADDING_SIDES, "padding_side")
    if image_token_id != IMAGE_TOKEN_INDEX:  # an in-vocabulary image token (llava-hf): LLaVA's −200 means it too
        input_ids = input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, image_token_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
        )
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    if image_mask is not None and image_mask.shape != (input_ids.shape[0],):
        raise ValueError(f"image_mask must be [B] = [{input_ids.shape[0]}], got {tuple(image_mask.shape)}")
    ids, mask, text_labels, slot = _compact(
        input_ids, attention_mask.to(torch.bool), labels,
        image_token_id=image_token_id, pad_token_id=pad_token_id, pad_left=padding_side == "left",
    )
    if image_mask is None:
        return SequenceLayout(ids, mask, position_ids_from_mask(mask), text_labels, None)
    batch, tokens, device = ids.shape[0], num_visual_tokens, ids.device
    if tokens > 1 and bool(((input_ids == image_token_id).sum(dim=1) >= tokens).all()):
        # Already laid out (every row holds its N slots): its N slot columns are padding after compaction; drop
        # them so that laying out again keeps the length (one host sync per call).
        if padding_side == "left":
            ids, mask = ids[:, tokens:], mask[:, tokens:]
            text_labels = None if text_labels is None else text_labels[:, tokens:]
            slot = (slot - tokens).clamp_min(0)
        else:
            keep = ids.shape[1] - tokens
            ids, mask = ids[:, :keep], mask[:, :keep]
            text_labels = None if text_labels is None else text_labels[:, :keep]
    visual_mask = repeat(image_mask.to(device=device, dtype=torch.bool), "b -> b n", n=tokens)
    if placement == "prefix":
        slot = torch.zeros_like(slot)
    else:  # a row without an image keeps its (masked) slots where a row without a placeholder has them
        no_slot = torch.zeros_like(slot) if padding_side == "left" else mask.long().sum(dim=1)
        slot = torch.where(visual_mask[:, 0], slot, no_slot)
    text_length = ids.shape[1]
    columns = rearrange(torch.arange(text_length + tokens, device=device), "j -> 1 j")
    start = rearrange(slot, "b -> b 1")
    is_visual = (columns >= start) & (columns < start + tokens)
    text_index = torch.where(columns < start, columns, columns - tokens).clamp(0, max(text_length - 1, 0))
    visual_index = (columns - start).clamp(0, tokens - 1)
    if text_length == 0:
        out_ids = torch.full((batch, tokens), image_token_id, dtype=ids.dtype, device=device)
        out_mask, out_labels = visual_mask, None if labels is None else torch.full_like(out_ids, IGNORE_INDEX)
    else:
        out_ids = torch.where(is_visual, image_token_id, ids.gather(1, text_index))
        out_mask = torch.where(is_visual, visual_mask.gather(1, visual_index), mask.gather(1, text_index))
        out_labels = None
        if text_labels is not None:
            out_labels = torch.where(is_visual, IGNORE_INDEX, text_labels.gather(1, text_index))
    positions = start + rearrange(torch.arange(tokens, device=device), "n -> 1 n")
    return SequenceLayout(out_ids, out_mask, position_ids_from_mask(out_mask), out_labels, positions)
