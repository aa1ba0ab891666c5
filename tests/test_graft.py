"""``rsfuse.injection.graft``: gated injectors on host decoders through forward pre-hooks."""

import inspect
import subprocess
import sys

import pytest
import torch
import transformers

from factories.llama import make_hf_llama
from factories.mfrsvlm import make_model
from rsfuse.injection import GatedInjector, Router, graft

DIM = 32
VISUAL = 6


def _injectors(layers, *, scale: float, seed: int = 0) -> dict[int, GatedInjector]:
    torch.manual_seed(seed)
    return {layer: GatedInjector(DIM, router=Router(DIM), residual_scale_init=scale) for layer in layers}


def _stacks(batch: int = 2, stacks: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, stacks, VISUAL, DIM, generator=torch.Generator().manual_seed(seed))


def _embeds(batch: int = 2, length: int = 11, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(seed))


def _tiny_host(kind: str) -> torch.nn.Module:
    if kind == "llama":
        return make_hf_llama(seed=0, hidden_size=DIM, num_hidden_layers=3)
    common = dict(
        vocab_size=96, hidden_size=DIM, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**common)
        config._attn_implementation = "sdpa"
        return transformers.Qwen2ForCausalLM(config).eval()
    config = transformers.MistralConfig(**common, sliding_window=None)
    config._attn_implementation = "sdpa"
    return transformers.MistralForCausalLM(config).eval()


@torch.no_grad()
def test_zero_residual_scale_gives_the_host_logits_exactly():
    host = _tiny_host("llama")
    embeds = _embeds()
    reference = host(inputs_embeds=embeds).logits
    handle = graft(host, _injectors([0, 2], scale=0.0), visual_slice=slice(0, VISUAL))
    with handle.use(_stacks()):
        grafted = host(inputs_embeds=embeds).logits
    assert torch.equal(grafted, reference)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_graft_changes_only_inside_use_and_remove_restores(kind):
    host = _tiny_host(kind)
    keys_before = list(host.state_dict())
    embeds = _embeds()
    reference = host(inputs_embeds=embeds).logits
    handle = graft(host, _injectors([1], scale=1.0), visual_slice=(2, 2 + VISUAL))
    assert list(host.state_dict()) == keys_before, "injectors must not become submodules of the host"
    assert all(not name.startswith("1.") for name, _ in host.named_parameters())
    assert torch.equal(host(inputs_embeds=embeds).logits, reference), "no injection outside handle.use"
    with handle.use(_stacks()):
        grafted = host(inputs_embeds=embeds).logits
    assert not torch.allclose(grafted, reference, atol=1e-4)
    # Causal decoder: positions before the visual span are untouched.
    torch.testing.assert_close(grafted[:, :2], reference[:, :2])
    handle.remove()
    with pytest.raises(RuntimeError, match="removed"):
        with handle.use(_stacks()):
            pass
    assert torch.equal(host(inputs_embeds=embeds).logits, reference)
    assert all(len(layer._forward_pre_hooks) == 0 for layer in host.model.layers)


@torch.no_grad()
def test_decode_steps_shorter_than_the_visual_span_are_not_injected():
    host = _tiny_host("llama")
    handle = graft(host, _injectors([0], scale=1.0), visual_slice=slice(0, VISUAL))
    short = _embeds(length=VISUAL - 1)
    reference = host(inputs_embeds=short).logits
    with handle.use(_stacks()):
        assert torch.equal(host(inputs_embeds=short).logits, reference)


@torch.no_grad()
def test_visual_positions_equal_the_slice_when_they_name_the_same_positions():
    host = _tiny_host("llama")
    handle = graft(host, _injectors([0, 2], scale=1.0), visual_slice=slice(3, 3 + VISUAL))
    embeds, stacks = _embeds(), _stacks()
    with handle.use(stacks):
        by_slice = host(inputs_embeds=embeds).logits
    positions = (torch.arange(VISUAL) + 3).expand(2, -1)
    with handle.use(stacks, visual_positions=positions):
        by_positions = host(inputs_embeds=embeds).logits
    torch.testing.assert_close(by_positions, by_slice)


@torch.no_grad()
def test_visual_positions_equal_the_slice_for_routerless_injectors_and_one_detail_map():
    """``[B, N, D]`` detail (no router) with visual positions: the span to inject is N positions (the prompt here
    is shorter than the width D, so confusing the two would skip the prefill)."""
    host = _tiny_host("llama")
    torch.manual_seed(0)
    handle = graft(host, {0: GatedInjector(DIM, residual_scale_init=1.0)}, visual_slice=slice(3, 3 + VISUAL))
    embeds, detail = _embeds(), _stacks()[:, 0]
    assert embeds.shape[1] < DIM
    plain = host(inputs_embeds=embeds).logits
    with handle.use(detail):
        by_slice = host(inputs_embeds=embeds).logits
    with handle.use(detail, visual_positions=(torch.arange(VISUAL) + 3).expand(2, -1)):
        by_positions = host(inputs_embeds=embeds).logits
    assert not torch.allclose(by_slice, plain, atol=1e-4)
    torch.testing.assert_close(by_positions, by_slice)


@torch.no_grad()
def test_sample_mask_leaves_unmarked_samples_untouched():
    host = _tiny_host("llama")
    embeds = _embeds()
    reference = host(inputs_embeds=embeds).logits
    handle = graft(host, _injectors([0], scale=1.0), visual_slice=slice(0, VISUAL))
    with handle.use(_stacks(), sample_mask=torch.tensor([False, True])):
        grafted = host(inputs_embeds=embeds).logits
    assert torch.equal(grafted[0], reference[0])
    assert not torch.allclose(grafted[1], reference[1], atol=1e-4)


def test_graft_exposes_injectors_for_an_optimizer_and_validates_layers():
    host = _tiny_host("llama")
    injectors = _injectors([2, 0], scale=1.0)
    handle = graft(host, injectors, visual_slice=slice(0, VISUAL))
    assert list(handle.injectors.keys()) == ["0", "2"]
    assert handle.layer_indices == [0, 2]
    assert {id(p) for p in handle.injectors.parameters()} == {id(p) for m in injectors.values() for p in m.parameters()}
    for index in (3, 7, -1):
        with pytest.raises(ValueError, match=f"injection layer index {index} .* 3 layers"):
            graft(host, {index: injectors[0]}, visual_slice=slice(0, VISUAL))
    with pytest.raises(ValueError, match="visual_slice"):
        graft(host, {0: injectors[0]}, visual_slice=slice(4, 2))
    with pytest.raises(ValueError, match="covers 6 positions but the stacks hold 4"):
        with handle.use(torch.randn(2, 3, 4, DIM)):
            pass


def test_training_through_the_graft_reaches_the_injectors_only_where_used():
    host = _tiny_host("llama")
    handle = graft(host, _injectors([1], scale=1.0), visual_slice=slice(0, VISUAL))
    with handle.use(_stacks()):
        loss = host(inputs_embeds=_embeds()).logits.square().mean()
    loss.backward()
    injector = handle.injectors["1"]
    assert injector.gate_proj.weight.grad is not None and injector.gate_proj.weight.grad.abs().sum() > 0
    assert injector.router.query[1].weight.grad is not None


@torch.no_grad()
def test_grafted_transformers_llama_matches_rsfuse_mfrsvlm_with_the_same_weights():
    model = make_model(seed=3)
    llm = model.config.llm
    hf_config = transformers.LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, rms_norm_eps=llm.rms_norm_eps, rope_theta=llm.rope_theta,
        max_position_embeddings=llm.max_position_embeddings, pad_token_id=llm.pad_token_id,
    )
    hf_config._attn_implementation = "sdpa"
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(model.llm.state_dict(), strict=True)
    handle = graft(hf, dict(model.injectors.items()), visual_slice=slice(0, model.num_visual_tokens))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    layout, embeds, injection = model.prefill_inputs(pixels, ids)
    ours = model(pixels, ids).logits
    with handle.use(injection.context.stacks):
        theirs = hf(
            inputs_embeds=embeds,
            attention_mask=layout.attention_mask.long(),
            position_ids=layout.position_ids,
        ).logits
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=1e-4)
    without = hf(inputs_embeds=embeds, position_ids=layout.position_ids).logits
    assert not torch.allclose(without, ours, atol=1e-3), "the injectors must change the logits"


def test_importing_injection_imports_neither_rsfuse_llm_nor_transformers():
    code = (
        "import sys, rsfuse.injection\n"
        "bad = [m for m in ('rsfuse.llm', 'transformers', 'xformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _greedy_by_full_reforward(host, handle, stacks, prompt_embeds, steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens by re-running the whole grafted host (injection active) on prompt + generated each step, and each
    step's last-position logits ``[steps, B, V]``."""
    embed = host.get_input_embeddings()
    sequence = prompt_embeds
    tokens: list[torch.Tensor] = []
    all_logits = []
    with handle.use(stacks):
        for _ in range(steps):
            logits = host(inputs_embeds=sequence).logits[:, -1]
            all_logits.append(logits)
            token = logits.argmax(dim=-1)
            tokens.append(token)
            sequence = torch.cat([sequence, embed(token)[:, None]], dim=1)
    return torch.stack(tokens, dim=1).tolist(), torch.stack(all_logits)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_grafted_host_decodes_with_its_kv_cache_and_generate_like_a_full_reforward(kind):
    """Injection at prefill only: the cached decode steps (and HF ``generate``) read the injected visual keys/values
    and inject nothing themselves, so each step equals a full re-forward of the grafted host."""
    host = _tiny_host(kind)
    handle = graft(host, _injectors([0, 2], scale=1.0, seed=4), visual_slice=slice(0, VISUAL))
    embed = host.get_input_embeddings()
    stacks = _stacks(seed=5)
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(6))
    prompt = torch.cat([_embeds(length=VISUAL, seed=7), embed(ids)], dim=1)  # [visual tokens][text]
    steps = 6
    expected, expected_logits = _greedy_by_full_reforward(host, handle, stacks, prompt, steps)
    # The injection matters here: without it the first step's logits differ.
    assert not torch.allclose(host(inputs_embeds=prompt).logits[:, -1], expected_logits[0], atol=1e-3)

    with handle.use(stacks):  # the handle stays active through the decode steps, as a user would leave it
        output = host(inputs_embeds=prompt, use_cache=True)
        cache = output.past_key_values
        token = output.logits[:, -1].argmax(dim=-1)
        cached, cached_logits = [token], [output.logits[:, -1]]
        # transformers 5 renamed the argument `past_key_values` to `cache` (the old name warns); 4.x has the old one.
        cache_argument = "cache" if "cache" in inspect.signature(host.forward).parameters else "past_key_values"
        for _ in range(steps - 1):
            output = host(inputs_embeds=embed(token)[:, None], use_cache=True, **{cache_argument: cache})
            cache = output.past_key_values
            token = output.logits[:, -1].argmax(dim=-1)
            cached.append(token)
            cached_logits.append(output.logits[:, -1])
    assert torch.stack(cached, dim=1).tolist() == expected
    torch.testing.assert_close(torch.stack(cached_logits), expected_logits, atol=1e-5, rtol=1e-4)

    with handle.use(stacks):
        generated = host.generate(
            inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long),
            max_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None,
        )
    assert generated[:, -steps:].tolist() == expected
