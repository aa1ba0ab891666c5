"""The step-wise generation API (``GenerationSession``) and ``generate``'s limits and compiled decoding.

References are independent of the session: a greedy re-forward of the full model (``MFRSVLM.forward`` on the prompt
plus the tokens so far, argmax of the last logits) and ``generate`` of each prompt alone.
"""

import copy

import pytest
import torch

from factories.host_syncs import count_host_syncs
from factories.mfrsvlm import make_model

from rsfuse.generation import GenerationSession, SamplingParams, sample_tokens

IMAGE = -200


@pytest.fixture(scope="module")
def model():
    return make_model(seed=21)


def _pixels(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _prompt(length: int, seed: int) -> torch.Tensor:
    ids = torch.randint(3, 500, (1, length), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 1
    ids[0, 1] = IMAGE
    return ids


def _greedy_by_reforward(model, pixels, ids, steps: int) -> list[int]:
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            full = torch.cat([ids, torch.tensor([tokens], dtype=torch.long).reshape(1, -1)], dim=1)
            output = model(pixels, full)
            last = int(output.attention_mask[0].nonzero().max())  # the placeholder's column becomes padding
            tokens.append(int(output.logits[0, last].argmax()))
    return tokens


def _drain(session: GenerationSession, rows: list[int]) -> None:
    while any(session.rows[row].finish_reason is None for row in rows):
        session.step()
        session.poll()


def test_a_request_joining_a_running_batch_decodes_as_if_alone(model):
    session = GenerationSession(model, max_batch=2, max_length=100)
    params = SamplingParams(max_new_tokens=6, eos_token_ids=())
    first = session.add(_pixels(0), _prompt(9, 0), params=params)
    session.step()
    session.step()
    session.poll()
    second = session.add(_pixels(1), _prompt(5, 1), params=SamplingParams(max_new_tokens=4, eos_token_ids=()))
    assert first == [0] and second == [1]
    _drain(session, first + second)
    assert session.tokens(0) == _greedy_by_reforward(model, _pixels(0), _prompt(9, 0), 6)
    assert session.tokens(1) == _greedy_by_reforward(model, _pixels(1), _prompt(5, 1), 4)
    assert session.rows[0].finish_reason == "length" and session.rows[1].finish_reason == "length"


def test_a_released_row_takes_the_next_request_while_the_other_keeps_decoding(model):
    session = GenerationSession(model, max_batch=2, max_length=100)
    long, short = SamplingParams(max_new_tokens=8, eos_token_ids=()), SamplingParams(max_new_tokens=2, eos_token_ids=())
    session.add(_pixels(0), _prompt(9, 0), params=long)
    session.add(_pixels(1), _prompt(6, 1), params=short)
    session.step()
    updates = {update.row: update for update in session.poll()}
    assert updates[1].finish_reason == "length" and len(session.tokens(1)) == 2
    session.release(1)
    assert session.free_rows == [1]
    row = session.add(_pixels(2), _prompt(7, 2), params=SamplingParams(max_new_tokens=3, eos_token_ids=()))
    assert row == [1]
    _drain(session, [0, 1])
    assert session.tokens(0) == _greedy_by_reforward(model, _pixels(0), _prompt(9, 0), 8)
    assert session.tokens(1) == _greedy_by_reforward(model, _pixels(2), _prompt(7, 2), 3)


def test_cancel_stops_a_row_and_eos_and_stop_strings_finish_rows(model):
    expected = _greedy_by_reforward(model, _pixels(0), _prompt(9, 0), 5)
    session = GenerationSession(model, max_batch=3, max_length=100, decode=lambda ids: " ".join(map(str, ids)))
    session.add(_pixels(0), _prompt(9, 0), params=SamplingParams(max_new_tokens=20, eos_token_ids=(expected[2],)))
    session.add(_pixels(0), _prompt(9, 0), params=SamplingParams(max_new_tokens=20, eos_token_ids=(),
                                                                 stop_strings=(str(expected[3]),)))
    session.add(_pixels(0), _prompt(9, 0), params=SamplingParams(max_new_tokens=20, eos_token_ids=()))
    session.step()
    session.cancel(2)
    _drain(session, [0, 1])
    assert session.tokens(0) == expected[:3] and session.rows[0].finish_reason == "eos"
    assert session.tokens(1)[:4] == expected[:4] and session.rows[1].finish_reason == "stop"
    assert session.rows[2].finish_reason == "cancelled" and session.tokens(2) == []
    assert session.active_rows == []


def test_per_row_settings_greedy_row_is_unaffected_by_a_sampled_row(model):
    expected = _greedy_by_reforward(model, _pixels(0), _prompt(9, 0), 5)
    session = GenerationSession(model, max_batch=2, max_length=100, generator=torch.Generator().manual_seed(0))
    session.add(torch.cat([_pixels(0), _pixels(0)]), torch.cat([_prompt(9, 0), _prompt(9, 0)]),
                params=[SamplingParams(max_new_tokens=5, eos_token_ids=()),
                        SamplingParams(max_new_tokens=5, temperature=5.0, eos_token_ids=())])
    _drain(session, [0, 1])
    assert session.tokens(0) == expected
    assert session.tokens(1) != expected  # at temperature 5 on 512 tokens, five argmaxes in a row are unlikely


def test_sample_tokens_follows_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature = 0.7
    expected = torch.softmax(logits / temperature, dim=0)
    draws = 20000
    seeds = torch.arange(draws)  # one stream per row; every row at step 0
    tokens = sample_tokens(logits.expand(draws, -1), torch.full((draws,), temperature), torch.ones(draws),
                           seeds=seeds, steps=torch.zeros(draws, dtype=torch.long))
    frequencies = torch.bincount(tokens, minlength=4).float() / draws
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    nucleus = sample_tokens(logits.expand(draws, -1), torch.full((draws,), temperature), torch.full((draws,), 0.8),
                            seeds=torch.full((draws,), 7), steps=torch.arange(draws))  # one stream, many steps
    kept = expected[:2] / expected[:2].sum()  # 0.8 is reached by the two most likely tokens (0.76 + ...)
    torch.testing.assert_close(torch.bincount(nucleus, minlength=4).float()[:2] / draws, kept, atol=0.015, rtol=0)
    assert int((nucleus >= 2).sum()) == 0
    greedy = sample_tokens(logits[None], torch.zeros(1), torch.ones(1), seeds=torch.zeros(1, dtype=torch.long),
                           steps=torch.zeros(1, dtype=torch.long))
    assert greedy.tolist() == [0]


def test_counter_based_noise_is_uniform_and_depends_on_seed_step_and_token_only():
    from rsfuse.generation.sampling import noise_uniform

    ids = torch.arange(50000).reshape(2, 25000)
    noise = noise_uniform(torch.tensor([3, 2**40 + 3]), torch.tensor([0, 0]), ids)
    assert noise.dtype == torch.float32 and 0 < float(noise.min()) and float(noise.max()) < 1
    for row in noise:  # uniform: mean 1/2, variance 1/12, deciles 1/10 each
        assert abs(float(row.mean()) - 0.5) < 0.01 and abs(float(row.var()) - 1 / 12) < 0.003
        torch.testing.assert_close(torch.histc(row, bins=10, min=0, max=1) / row.numel(), torch.full((10,), 0.1),
                                   atol=0.01, rtol=0)
    # the high half of the seed matters, and so do the step and the token id; nothing else does
    assert not torch.equal(noise[0], noise[1])
    again = noise_uniform(torch.tensor([3]), torch.tensor([0]), ids[:1].flip(-1)).flip(-1)
    assert torch.equal(again[0], noise[0])
    assert not torch.equal(noise_uniform(torch.tensor([3]), torch.tensor([1]), ids[:1])[0], noise[0])
    # neighbouring seeds and steps are uncorrelated
    other = noise_uniform(torch.tensor([4]), torch.tensor([0]), ids[:1])[0]
    assert abs(float(torch.corrcoef(torch.stack([noise[0], other]))[0, 1])) < 0.03


def test_a_seeded_request_gets_the_same_answer_whatever_is_batched_beside_it(model):
    sampled = SamplingParams(max_new_tokens=8, temperature=1.5, eos_token_ids=(), seed=11)
    alone = GenerationSession(model, max_batch=1, max_length=100)
    alone.add(_pixels(0), _prompt(9, 0), params=sampled)
    _drain(alone, [0])
    crowded = GenerationSession(model, max_batch=3, max_length=100)
    others = [SamplingParams(max_new_tokens=8, temperature=1.5, eos_token_ids=(), seed=seed) for seed in (1, 2)]
    crowded.add(torch.cat([_pixels(2), _pixels(0), _pixels(1)]), torch.cat([_prompt(9, 2), _prompt(9, 0), _prompt(9, 1)]),
                params=[others[0], sampled, others[1]])
    _drain(crowded, [0, 1, 2])
    assert crowded.tokens(1) == alone.tokens(0)
    assert crowded.tokens(0) != crowded.tokens(1) or crowded.tokens(2) != crowded.tokens(1)
    reseeded = GenerationSession(model, max_batch=1, max_length=100)
    reseeded.add(_pixels(0), _prompt(9, 0), params=SamplingParams(max_new_tokens=8, temperature=1.5,
                                                                  eos_token_ids=(), seed=12))
    _drain(reseeded, [0])
    assert reseeded.tokens(0) != alone.tokens(0)


def test_limits_are_value_errors_naming_the_numbers(model):
    context = model.config.llm.max_position_embeddings
    with pytest.raises(ValueError, match=rf"max_new_tokens {context}.*max_position_embeddings = {context}"):
        model.generate(_pixels(0), _prompt(9, 0), max_new_tokens=context)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        model.generate(_pixels(0), _prompt(9, 0), max_new_tokens=0)
    bad = _prompt(9, 0)
    bad[0, 4] = model.config.llm.vocab_size + 7
    with pytest.raises(ValueError, match=rf"input_ids\[0, 4\] = {model.config.llm.vocab_size + 7}.*vocab_size"):
        model.generate(_pixels(0), bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="non-finite logits"):
        model.generate(torch.full_like(_pixels(0), float("nan")), _prompt(9, 0), max_new_tokens=2)


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_greedy_tokens(model):
    ids = torch.cat([_prompt(9, 0), _prompt(9, 3)])
    pixels = torch.cat([_pixels(0), _pixels(3)])
    eager = model.generate(pixels, ids, max_new_tokens=12, eos_token_id=[])
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = model.generate(pixels, ids, max_new_tokens=12, eos_token_id=[], compile=True)
    assert torch.equal(compiled, eager)
    # One graph for the decode step, no graph break (shape checks, on in the tests, are skipped while tracing).
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert eager[0].tolist() == _greedy_by_reforward(model, _pixels(0), _prompt(9, 0), 12)
    # Another prompt length in the same cache-length bucket reuses the session and the compiled step.
    graphs = counters["stats"]["unique_graphs"]
    assert len(model.compiled_sessions) == 1
    longer = torch.cat([_prompt(13, 5), _prompt(13, 6)])
    again = model.generate(pixels, longer, max_new_tokens=12, eos_token_id=[], compile=True)
    assert len(model.compiled_sessions) == 1 and counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(again, model.generate(pixels, longer, max_new_tokens=12, eos_token_id=[]))


def test_a_first_token_that_is_eos_ends_a_one_token_request_at_prefill(model):
    """``max_new_tokens=1`` and the first token is an EOS id: the row is done at prefill, a step adds nothing."""
    probe = GenerationSession(model, max_batch=1, max_length=100)
    probe.add(_pixels(4), _prompt(7, 4), params=SamplingParams(max_new_tokens=1, eos_token_ids=()))
    probe.poll()
    first = probe.tokens(0)[0]
    session = GenerationSession(model, max_batch=1, max_length=100)
    session.add(_pixels(4), _prompt(7, 4), params=SamplingParams(max_new_tokens=1, eos_token_ids=(first,)))
    session.step()
    (update,) = session.poll()
    assert update.new_tokens == [first] and update.finish_reason == "eos"


def test_adding_a_greedy_request_draws_no_randomness(model):
    """A sampled row's draws are the same whether or not a greedy request joins it midway: a greedy prefill takes
    the argmax and leaves the generator alone (each decode step draws for every row either way)."""

    def sampled_tokens(join: bool) -> list[int]:
        session = GenerationSession(model, max_batch=2, max_length=100, generator=torch.Generator().manual_seed(5))
        sampled = SamplingParams(max_new_tokens=10, temperature=1.5, eos_token_ids=())
        session.add(_pixels(0), _prompt(9, 0), params=sampled)
        for _ in range(3):
            session.step()
        if join:
            session.add(_pixels(1), _prompt(5, 1), params=SamplingParams(max_new_tokens=4, eos_token_ids=()))
        for _ in range(6):
            session.step()
        session.poll()
        return session.tokens(0)

    assert sampled_tokens(join=True) == sampled_tokens(join=False)


def test_a_new_request_with_more_eos_ids_leaves_the_running_rows_stop_rules_alone(model):
    """The per-row EOS table widens when a request brings more EOS ids than any before; the running rows' new
    columns must match no token. A decoder whose logits always pick token 1 makes any wrong match visible."""
    always_one = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.llm.hidden_size, model.config.llm.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[1] = 1.0
    always_one.llm.lm_head = head
    session = GenerationSession(always_one, max_batch=2, max_length=100)
    session.add(_pixels(0), _prompt(9, 0), params=SamplingParams(max_new_tokens=4, eos_token_ids=()))
    session.step()
    session.add(_pixels(1), _prompt(5, 1), params=SamplingParams(max_new_tokens=2, eos_token_ids=(7, 8, 9)))
    _drain(session, [0, 1])
    assert session.tokens(0) == [1, 1, 1, 1] and session.rows[0].finish_reason == "length"
    assert session.tokens(1) == [1, 1]


def test_a_decode_step_reads_nothing_back_to_the_host(model, monkeypatch):
    session = GenerationSession(model, max_batch=3, max_length=100)
    session.add(torch.cat([_pixels(0), _pixels(1)]), torch.cat([_prompt(9, 0), _prompt(9, 1)]),
                params=[SamplingParams(max_new_tokens=6, eos_token_ids=()),
                        SamplingParams(max_new_tokens=6, temperature=1.0, eos_token_ids=(), seed=3)])
    session.step()  # warm
    calls = count_host_syncs(monkeypatch)
    for _ in range(3):
        session.step()
    assert calls == []
    session.poll()
    assert calls  # the counter does see reads: poll synchronises once by design
