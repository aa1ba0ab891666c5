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


# ----- generation tied to the public forward (not to itself) -------------------------------------------------------


def _greedy_by_public_forward(model, pixels, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding the slow way: ``model(pixels, prompt + generated).logits[:, -1].argmax()`` at every step."""
    ids = prompt[None]
    tokens = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(pixels, ids).logits[0, -1].argmax()
            tokens.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return torch.tensor(tokens)


def _without_injection(model):
    """A copy whose injectors add nothing (residual scales 0): what the model would be if injection were dropped."""
    import copy

    plain = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in plain.named_parameters():
            if name.endswith("residual_scale"):
                parameter.zero_()
    return plain


def test_cached_greedy_equals_argmax_of_the_public_forward_step_by_step(model):
    prompts = [_prompt(7, 21), _prompt(4, 22)]
    pixels = _pixels(2, seed=21)
    ids, mask = _left_padded(prompts)
    steps = 6
    cached = model.generate(pixels, ids, mask, max_new_tokens=steps, eos_token_id=[])
    plain = _without_injection(model)
    differs = False
    for row, prompt in enumerate(prompts):
        expected = _greedy_by_public_forward(model, pixels[row : row + 1], prompt, steps)
        assert cached[row].tolist() == expected.tolist(), row
        differs |= expected.tolist() != _greedy_by_public_forward(plain, pixels[row : row + 1], prompt, steps).tolist()
    # The detail injection decides tokens here, so a generate that skipped it could not pass the comparison above.
    assert differs


def test_cached_greedy_equals_public_forward_for_each_batch_layout(model):
    """Right padding and the image placeholder give the same tokens as the public forward of each prompt alone."""
    prompts = [_prompt(5, 23), _prompt(8, 24), _prompt(3, 25)]
    pixels = _pixels(3, seed=22)
    right_ids, right_mask = _right_padded(prompts)
    cached = model.generate(pixels, right_ids, right_mask, max_new_tokens=4, eos_token_id=[])
    for row, prompt in enumerate(prompts):
        assert cached[row].tolist() == _greedy_by_public_forward(model, pixels[row : row + 1], prompt, 4).tolist()


def _one_step_frequencies(model, prompt: torch.Tensor, *, samples: int, temperature: float, top_p: float = 1.0):
    tokens = model.generate(
        None,
        prompt[None].expand(samples, -1),
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        generator=torch.Generator().manual_seed(1234),
        eos_token_id=[],
    )
    return torch.bincount(tokens[:, 0], minlength=model.config.llm.vocab_size).double() / samples


def test_sampling_follows_the_softmax_of_the_logits_at_the_temperature(model):
    prompt = _prompt(6, 8)
    samples, temperature = 16000, 0.5
    with torch.no_grad():
        logits = model(None, prompt[None]).logits[0, -1].double()
    expected = torch.softmax(logits / temperature, dim=-1)
    observed = _one_step_frequencies(model, prompt, samples=samples, temperature=temperature)
    sigma = (expected * (1 - expected) / samples).sqrt()
    top = expected.topk(10).indices
    assert bool(((observed[top] - expected[top]).abs() < 5 * sigma[top]).all()), (observed[top], expected[top])
    assert (observed - expected).abs().sum() / 2 < 0.08  # total variation; sampling noise alone is about 0.05
    # The check has power: sampling at temperature 1 (no division) or 2T would put the top token 10σ or more away.
    for wrong in (1.0, 2 * temperature):
        assert (torch.softmax(logits / wrong, dim=-1)[top[0]] - expected[top[0]]).abs() > 10 * sigma[top[0]]


def test_nucleus_sampling_draws_only_from_the_top_p_set_in_proportion(model):
    prompt = _prompt(6, 8)
    samples, temperature, top_p = 8000, 0.5, 0.3
    with torch.no_grad():
        probs = torch.softmax(model(None, prompt[None]).logits[0, -1].double() / temperature, dim=-1)
    order = probs.argsort(descending=True)
    cumulative = probs[order].cumsum(0)
    kept = order[: int((cumulative < top_p).sum()) + 1]  # smallest prefix whose mass reaches top_p
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    observed = _one_step_frequencies(model, prompt, samples=samples, temperature=temperature, top_p=top_p)
    assert set(observed.nonzero().flatten().tolist()) <= set(kept.tolist())
    sigma = (expected * (1 - expected) / samples).sqrt()
    assert bool(((observed[kept] - expected[kept]).abs() < 5 * sigma[kept] + 1e-9).all()), (observed[kept], expected[kept])
