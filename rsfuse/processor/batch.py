"""Tokenized samples → the model's inputs: padding and the sequence layout, the step that
``MFRSVLMProcessor.__call__`` (questions, conversations) and the training collate (``MFRSVLMProcessor.collator()``,
over `rsfuse.data.InstructionSample`s) share, so that training, evaluation, ``predict`` and the server hand the model
sequences laid out by the same function with the same settings.

`SampleCollator` holds settings only (ints and strings, no tokenizer): it pickles into ``DataLoader`` workers.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rsfuse._typing import Tensor
from rsfuse.data.instructions import InstructionSample, collate
from rsfuse.model.layout import layout_sequence
from rsfuse.options import PADDING_SIDES, check_option

__all__ = ["SampleCollator", "layout_batch"]


def layout_batch(
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor | None,
    image_mask: Tensor | None,
    *,
    padding_side: str,
    **settings: Any,
) -> dict[str, Tensor | None]:
    """Lay out padded raw ids (LLaVA's −200 at the image, as the tokenizer gives it) with the processor's
    ``settings`` (``num_visual_tokens``, ``image_token_id``, ``pad_token_id``, ``placement``): ``input_ids`` with the
    image token at each visual slot, ``attention_mask`` (long) and ``labels`` (None without labels). ``image_mask``
    marks the rows with an image (None: a text-only batch)."""
    layout = layout_sequence(input_ids, attention_mask, labels, image_mask=image_mask, padding_side=padding_side,
                             **settings)
    return {"input_ids": layout.input_ids, "attention_mask": layout.attention_mask.long(), "labels": layout.labels}


@dataclass(frozen=True)
class SampleCollator:
    """``collator(samples)`` → the model's training batch: ``pixel_values`` (``[B, 3, S, S]``, zeros for text-only
    samples; None when no sample has an image), ``image_mask`` (``[B]`` bool), laid-out ``input_ids``,
    ``attention_mask`` and ``labels`` (−100 at the visual slots and padding). Build it with
    ``MFRSVLMProcessor.collator(padding_side)``."""

    num_visual_tokens: int
    image_token_index: int
    pad_token_id: int
    placement: str
    padding_side: str = "right"

    def __post_init__(self) -> None:
        check_option(self.padding_side, PADDING_SIDES, "padding_side")

    def __call__(self, samples: Sequence[InstructionSample]) -> dict[str, Tensor | None]:
        raw = collate(samples, pad_id=self.pad_token_id, padding_side=self.padding_side)
        laid_out = layout_batch(
            raw["input_ids"],
            raw["attention_mask"],
            raw["labels"],
            raw["image_mask"] if raw["pixel_values"] is not None else None,
            padding_side=self.padding_side,
            num_visual_tokens=self.num_visual_tokens,
            image_token_id=self.image_token_index,
            pad_token_id=self.pad_token_id,
            placement=self.placement,
        )
        return {"pixel_values": raw["pixel_values"], "image_mask": raw["image_mask"], **laid_out}
