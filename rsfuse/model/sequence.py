"""The model's side of the sequence layout (docs/INTERNALS.md, "the one road a prompt takes"): taking the layout
``MFRSVLMProcessor`` decided (`given_layout`: no id inspected, no host sync), the one explicit layout at the model's
boundary for raw ids (`boundary_layout`), and the vocabulary check generation runs once per prefill
(`check_token_ids`). Functions of an ``MFRSVLMConfig``; ``MFRSVLM`` calls them."""

import torch

from rsfuse._typing import TYPECHECK, Tensor
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX
from rsfuse.model.config import MFRSVLMConfig
from rsfuse.model.layout import SequenceLayout, layout_sequence, position_ids_from_mask

__all__ = ["boundary_layout", "check_token_ids", "given_layout"]


def given_layout(
    config: MFRSVLMConfig,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    visual_positions: Tensor,
) -> SequenceLayout:
    """The processor's layout (``visual_positions`` beside laid-out ids), taken as it is. Shapes are checked always,
    the ids at the positions only under ``RSFUSE_TYPECHECK=1`` (a host sync)."""
    tokens = config.num_visual_tokens
    if visual_positions.ndim != 2 or visual_positions.shape[0] != input_ids.shape[0]:
        raise ValueError(f"MFRSVLM: visual_positions must be [B, N] = [{input_ids.shape[0]}, {tokens}], got "
                         f"{tuple(visual_positions.shape)}")
    if visual_positions.shape[1] != tokens:
        raise ValueError(f"MFRSVLM: visual_positions holds {visual_positions.shape[1]} positions per row but the "
                         f"model has {tokens} visual tokens (a processor of another model?)")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    if TYPECHECK:
        _check_ids_at_positions(config, input_ids, visual_positions)
    return SequenceLayout(input_ids, mask, position_ids_from_mask(mask), labels, visual_positions)


def _check_ids_at_positions(config: MFRSVLMConfig, input_ids: Tensor, visual_positions: Tensor) -> None:
    at_slots = input_ids.gather(1, visual_positions.clamp(0, input_ids.shape[1] - 1))
    if not bool((at_slots == config.image_token_index).all()):
        raise ValueError(f"MFRSVLM: input_ids do not hold the image token {config.image_token_index} at "
                         "visual_positions (ids and positions from different processor calls?)")
    front = torch.arange(visual_positions.shape[1], device=visual_positions.device)
    if config.image_placement == "prefix" and not bool((visual_positions == front).all()):
        raise ValueError("MFRSVLM: prefix placement needs the visual positions 0..N-1 in every row")


def boundary_layout(
    config: MFRSVLMConfig,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    *,
    image_mask: Tensor | None,
    padding_side: str,
) -> SequenceLayout:
    """The explicit layout for ids that come without the processor's ``visual_positions`` (raw: no placeholder, one
    LLaVA −200 or ``N`` in-vocabulary image tokens, any padding): ``layout_sequence`` with the model's settings; rows
    of ``image_mask`` (None: a text-only batch) get the visual slots. One host sync (the placeholder count check)."""
    if input_ids.ndim != 2:
        raise ValueError(f"MFRSVLM: input_ids must be [B, L], got {tuple(input_ids.shape)}")
    tokens = config.num_visual_tokens
    placeholders = (input_ids == config.image_token_index) | (input_ids == IMAGE_TOKEN_INDEX)
    if attention_mask is not None:
        placeholders = placeholders & attention_mask.to(torch.bool)
    counts = placeholders.sum(dim=1)
    wrong = (counts > 1) & (counts != tokens)
    if bool(wrong.any()):
        row = int(wrong.nonzero()[0])
        raise ValueError(f"MFRSVLM: input_ids row {row} holds {int(counts[row])} image placeholders but the model "
                         f"has {tokens} visual tokens (give one placeholder, {tokens}, or none)")
    return layout_sequence(
        input_ids, attention_mask, labels, image_mask=image_mask, num_visual_tokens=tokens,
        image_token_id=config.image_token_index, pad_token_id=config.llm.pad_id, placement=config.image_placement,
        padding_side=padding_side,
    )


def check_token_ids(config: MFRSVLMConfig, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
    """A ValueError naming the first id outside the vocabulary (one host sync: generation runs it once per prefill;
    the training forward does not)."""
    vocab = config.llm.vocab_size
    text = (input_ids != config.image_token_index) & (input_ids != IMAGE_TOKEN_INDEX)
    if attention_mask is not None:
        text = text & attention_mask.to(torch.bool)
    bad = text & ((input_ids < 0) | (input_ids >= vocab))
    if bool(bad.any()):
        row, column = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"MFRSVLM: input_ids[{row}, {column}] = {int(input_ids[row, column])} is outside the vocabulary "
            f"(vocab_size {vocab}; the image placeholder is {config.image_token_index})"
        )
