"""``MFRSVLM.generate``: KV-cached decoding, padding layouts, EOS stopping, sampling, mixed batches."""

import pytest
import torch

from factories.mfrsvlm import TowerCounter, make_model

IMAGE = -200


@pytest.fixture(scope="module")
def model():
    return make_model(seed=11)


def _pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _prompt(length: int, seed: int) -> torch.Tensor:
    ids = torch.randint(3, 500, (length,), generator=torch.Generator().manual_seed(seed))
    ids[0] = 1  # BOS
    return ids


def _left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _right_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        mask[row, : len(prompt)] = 1
    return ids, mask


def test_greedy_with_cache_equals_greedy_by_full_reforward(model):
    prompts = [_prompt(7, 1), _prompt(4, 2)]
    ids, mask = _left_padded(prompts)
    cached = model.generate(_pixels(), ids, mask, max_new_tokens=6, eos_token_id=[])
    reforward = model.generate(_pixels(), ids, mask, max_new_tokens=6, eos_token_id=[], use_cache=False)
    assert cached.shape == (2, 6)
    assert torch.equal(cached, reforward)


def test_padded_batch_equals_each_prompt_alone_and_right_padding_is_converted(model):
    prompts = [_prompt(8, 3), _prompt(3, 4), _prompt(5, 5)]
    pixels = _pixels(3, seed=1)
    ids, mask = _left_padded(prompts)
    batched = model.generate(pixels, ids, mask, max_new_tokens=5, eos_token_id=[])
    for row, prompt in enumerate(prompts):
        alone = model.generate(pixels[row : row + 1], prompt[None], max_new_tokens=5, eos_token_id=[])
        assert torch.equal(batched[row], alone[0]), row
    right_ids, right_mask = _right_padded(prompts)
    assert torch.equal(model.generate(pixels, right_ids, right_mask, max_new_tokens=5, eos_token_id=[]), batched)
    with_placeholder = torch.cat([torch.full((3, 1), IMAGE), right_ids], dim=1)
    placeholder_mask = torch.cat([torch.ones(3, 1, dtype=torch.long), right_mask], dim=1)
    assert torch.equal(
        model.generate(pixels, with_placeholder, placeholder_mask, max_new_tokens=5, eos_token_id=[]), batched
    )


def test_eos_stops_each_sample_and_pads_after_it(model):
    prompts = [_prompt(6, 6), _prompt(6, 7)]
    ids, mask = _left_padded(prompts)
    free = model.generate(_pixels(), ids, mask, max_new_tokens=8, eos_token_id=[])
    eos = int(free[0, 1])
    assert eos not in free[0, :1].tolist()
    stopped = model.generate(_pixels(), ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert stopped[0, 1] == eos and bool((stopped[0, 2:] == 0).all())
    second_stop = (free[1] == eos).nonzero()
    if len(second_stop) == 0:
        assert torch.equal(stopped[1], free[1])
    # Both samples stop -> the loop ends early.
    both = model.generate(_pixels(), ids, mask, max_new_tokens=8, eos_token_id=[int(free[0, 0]), int(free[1, 0])])
    assert both.shape == (2, 1)


def test_sampling_is_reproducible_with_a_generator_and_tiny_top_p_is_greedy(model):
    ids, mask = _left_padded([_prompt(5, 8), _prompt(7, 9)])  # text-only: sampling does not depend on the images

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(
            None, ids, mask, max_new_tokens=8, temperature=1.5, top_p=0.95, generator=generator, eos_token_id=[]
        )

    first = sample(0)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1))
    greedy = model.generate(None, ids, mask, max_new_tokens=8, eos_token_id=[])
    nucleus_of_one = model.generate(
        None, ids, mask, max_new_tokens=8, temperature=0.7, top_p=1e-6, eos_token_id=[],
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(nucleus_of_one, greedy)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(None, ids, mask, max_new_tokens=2, temperature=1.0, top_p=0.0)


def test_mixed_text_only_and_image_batch_matches_each_alone(model):
    prompts = [_prompt(6, 10), _prompt(4, 11)]
    ids, mask = _left_padded(prompts)
    image_mask = torch.tensor([True, False])
    mixed = model.generate(_pixels(), ids, mask, max_new_tokens=5, eos_token_id=[], image_mask=image_mask)
    image_alone = model.generate(_pixels()[0:1], prompts[0][None], max_new_tokens=5, eos_token_id=[])
    text_alone = model.generate(None, prompts[1][None], max_new_tokens=5, eos_token_id=[])
    assert torch.equal(mixed[0], image_alone[0])
    assert torch.equal(mixed[1], text_alone[0])


def test_token_placement_generates_like_prefix_placement_at_the_front():
    prefix = make_model(seed=12)
    token = make_model(seed=12, image_placement="token")
    token.load_state_dict(prefix.state_dict())
    prompts = [_prompt(6, 12), _prompt(3, 13)]
    ids, mask = _left_padded(prompts)
    expected = prefix.generate(_pixels(), ids, mask, max_new_tokens=4, eos_token_id=[])
    with_front = [torch.cat([torch.tensor([IMAGE]), p]) for p in prompts]
    front_ids, front_mask = _left_padded(with_front)
    assert torch.equal(token.generate(_pixels(), front_ids, front_mask, max_new_tokens=4, eos_token_id=[]), expected)


def test_decode_steps_never_call_the_vision_tower():
    model = make_model(seed=14)
    counter = TowerCounter(model)
    ids, mask = _left_padded([_prompt(5, 14), _prompt(5, 15)])
    tokens = model.generate(_pixels(), ids, mask, max_new_tokens=6, eos_token_id=[])
    assert tokens.shape == (2, 6)
    per_forward = 1 + len(model.config.window_scales)
    assert counter.calls == per_forward
    counter.calls = 0
    model.generate(_pixels(), ids, mask, max_new_tokens=2, eos_token_id=[], use_cache=False)
    assert counter.calls == 2 * per_forward, "the reference path re-encodes every view for each new token"
