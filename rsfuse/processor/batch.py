"""Tokenized samples → the model's inputs: padding and the sequence layout, the one place that decides where visual
positions go. ``MFRSVLMProcessor.__call__`` (questions, conversations), ``MFRSVLMProcessor.pack`` (prompts
tokenized earlier, e.g. by the server, batched later) and the training collate (``MFRSVLMProcessor.collator()``,
over `rsfuse.data.InstructionSample`s) all end in `SampleCollator`, so training, evaluation, ``predict`` and the server
hand the model sequences laid out by the same function with the same settings — and say so: the output carries
``visual_positions [B, N]`` beside the laid-out ids, so the model only scatters features there.

`SampleCollator` holds settings only (ints and strings, no tokenizer): it pickles into ``DataLoader`` workers.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsfuse._typing import Tensor
from rsfuse.data.instructions import InstructionSample, collate
from rsfuse.model.layout import layout_sequence
from rsfuse.options import PADDING_SIDES, check_option

__all__ = ["SampleCollator"]


@dataclass(frozen=True)
class SampleCollator:
    """``collator(samples)`` → the model's batch: ``pixel_values`` (``[B, 3, S, S]``, zeros for text-only samples;
    None when no sample has an image), ``image_mask`` (``[B]`` bool), laid-out ``input_ids``, ``attention_mask``
    (long), ``labels`` (−100 at the visual slots and padding) and ``visual_positions`` (``[B, N]``, the sequence
    index of each visual slot; None without images). Build it with ``MFRSVLMProcessor.collator(padding_side)``."""

    num_visual_tokens: int
    image_token_index: int
    pad_token_id: int
    placement: str
    padding_side: str = "right"

    @classmethod
    def from_config(cls, config, padding_side: str = "right") -> "SampleCollator":
        """The collate of a model with ``config`` (an ``MFRSVLMConfig``), as its processor builds it."""
        return cls(num_visual_tokens=config.num_visual_tokens, image_token_index=config.image_token_index,
                   pad_token_id=config.llm.pad_id, placement=config.image_placement, padding_side=padding_side)

    def __post_init__(self) -> None:
        check_option(self.padding_side, PADDING_SIDES, "padding_side")

    def __call__(self, samples: Sequence[InstructionSample]) -> dict[str, Tensor | None]:
        raw = collate(samples, pad_id=self.pad_token_id, padding_side=self.padding_side)
        layout = layout_sequence(
            raw["input_ids"],
            raw["attention_mask"],
            raw["labels"],
            image_mask=raw["image_mask"] if raw["pixel_values"] is not None else None,
            padding_side=self.padding_side,
            num_visual_tokens=self.num_visual_tokens,
            image_token_id=self.image_token_index,
            pad_token_id=self.pad_token_id,
            placement=self.placement,
        )
        return {
            "pixel_values": raw["pixel_values"],
            "image_mask": raw["image_mask"],
            "input_ids": layout.input_ids,
            "attention_mask": layout.attention_mask.long(),
            "labels": layout.labels,
            "visual_positions": layout.visual_positions,
        }

    def sequence_length(self, token_ids: Sequence[int], *, has_image: bool) -> int:
        """Positions one tokenized prompt takes once laid out alone (what a context limit counts): the width of
        its layout, computed by the layout itself."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        layout = layout_sequence(
            ids, None, None, image_mask=torch.ones(1, dtype=torch.bool) if has_image else None,
            padding_side=self.padding_side, num_visual_tokens=self.num_visual_tokens,
            image_token_id=self.image_token_index, pad_token_id=self.pad_token_id, placement=self.placement,
        )
        return int(layout.input_ids.shape[1])
