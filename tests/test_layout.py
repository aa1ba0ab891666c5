"""``layout_sequence``: the one token layout shared by the processor and the model.

Expected values are built by hand from the rule (visual slots first or at the placeholder, padding on one side,
positions = cumsum(mask) − 1), not by the function under test; and laying out twice changes nothing.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsfuse.model.layout import layout_sequence

IMAGE, PAD, N = -200, 0, 3


def _layout(ids, mask, *, placement, side, image_mask=None, labels=None):
    image_mask = torch.ones(ids.shape[0], dtype=torch.bool) if image_mask is None else image_mask
    return layout_sequence(ids, mask, labels, image_mask=image_mask, num_visual_tokens=N, image_token_id=IMAGE,
                           pad_token_id=PAD, placement=placement, padding_side=side)


def test_hand_written_layouts():
    ids = torch.tensor([[1, IMAGE, 7, 8], [PAD, 1, 9, IMAGE]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    out = _layout(ids, mask, placement="token", side="left")
    assert out.input_ids.tolist() == [[PAD, 1, IMAGE, IMAGE, IMAGE, 7, 8], [PAD, PAD, 1, 9, IMAGE, IMAGE, IMAGE]]
    assert out.attention_mask.long().tolist() == [[0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]
    assert out.position_ids.tolist() == [[0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3, 4]]
    assert out.visual_positions.tolist() == [[2, 3, 4], [4, 5, 6]]
    out = _layout(ids, mask, placement="prefix", side="right")
    assert out.input_ids.tolist() == [[IMAGE] * 3 + [1, 7, 8, PAD], [IMAGE] * 3 + [1, 9, PAD, PAD]]
    assert out.visual_positions.tolist() == [[0, 1, 2], [0, 1, 2]]
    labels = _layout(ids, mask, placement="prefix", side="right", labels=ids.clone()).labels
    assert labels.tolist() == [[-100] * 3 + [1, 7, 8, -100], [-100] * 3 + [1, 9, -100, -100]]


def test_no_text_at_all():
    """An image with no text token (ids of width 0, or the N visual slots alone) lays out as the N visual tokens."""
    for ids in (torch.empty((2, 0), dtype=torch.long), torch.full((2, N), IMAGE)):
        for side in ("left", "right"):
            out = _layout(ids, None, placement="prefix", side=side, labels=torch.full_like(ids, 5))
            assert out.input_ids.tolist() == [[IMAGE] * N] * 2 and out.attention_mask.all()
            assert out.position_ids.tolist() == [[0, 1, 2]] * 2 and out.visual_positions.tolist() == [[0, 1, 2]] * 2
            assert out.labels.tolist() == [[-100] * N] * 2


def test_llava_placeholder_means_an_in_vocabulary_image_token():
    """With an in-vocabulary image token (llava-hf: 32), LLaVA's −200 marks the slot too."""
    ids = torch.tensor([[1, IMAGE, 7]])
    out = layout_sequence(ids, None, None, image_mask=torch.ones(1, dtype=torch.bool), num_visual_tokens=N,
                          image_token_id=32, pad_token_id=PAD, placement="token", padding_side="right")
    assert out.input_ids.tolist() == [[1, 32, 32, 32, 7, PAD]] and out.visual_positions.tolist() == [[1, 2, 3]]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    placeholder=st.lists(st.integers(-1, 5), min_size=4, max_size=4),
    has_image=st.lists(st.booleans(), min_size=4, max_size=4),
    placement=st.sampled_from(["prefix", "token"]),
    side=st.sampled_from(["left", "right"]),
    raw_side=st.sampled_from(["left", "right"]),
)
def test_laying_out_twice_changes_nothing(lengths, placeholder, has_image, placement, side, raw_side):
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        tokens = torch.arange(10, 10 + length)
        if 0 <= placeholder[row] < length:
            tokens[placeholder[row]] = IMAGE
        span = slice(width - length, width) if raw_side == "left" else slice(0, length)
        ids[row, span], mask[row, span] = tokens, 1
    image_mask = torch.tensor(has_image[: len(lengths)])
    once = _layout(ids, mask, placement=placement, side=side, image_mask=image_mask, labels=ids.clone())
    twice = _layout(once.input_ids, once.attention_mask, placement=placement, side=side, image_mask=image_mask,
                    labels=once.labels)
    for name in ("input_ids", "attention_mask", "position_ids", "labels", "visual_positions"):
        assert torch.equal(getattr(once, name), getattr(twice, name)), name
    real = once.attention_mask & (once.input_ids != IMAGE)
    for row, length in enumerate(lengths):  # every real token kept, in order
        kept = once.input_ids[row][real[row]].tolist()
        expected = [t for t in range(10, 10 + length) if not (0 <= placeholder[row] < length and
                                                              t == 10 + placeholder[row])]
        assert kept == expected


def test_bad_arguments_are_named():
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="padding_side"):
        _layout(ids, None, placement="prefix", side="middle")
    with pytest.raises(ValueError, match="placement"):
        _layout(ids, None, placement="suffix", side="left")
    with pytest.raises(ValueError, match="attention_mask"):
        _layout(ids, torch.ones(2, 4), placement="prefix", side="left")
