"""rsfuse's own decoder gets the visual context explicitly: no hooks on its layers, the injectors run through
their ``__call__`` (module hooks such as FSDP's unsharding fire) once per prefill and never while decoding, and the
statistics the forward returns are the injectors' own."""

import torch

from factories.mfrsvlm import make_model

IMAGE = -200


def _inputs():
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 500, (2, 7), generator=torch.Generator().manual_seed(1))
    ids[:, 1] = IMAGE
    return pixels, ids


def test_no_hooks_on_our_decoder_and_injectors_run_once_per_prefill_through_call():
    model = make_model(seed=4)
    for layer in model.llm.model.layers:
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    calls = {int(index): 0 for index in model.injectors}
    for index, injector in model.injectors.items():
        injector.register_forward_pre_hook(lambda *_, i=int(index): calls.__setitem__(i, calls[i] + 1))
    pixels, ids = _inputs()
    with torch.no_grad():
        model(pixels, ids)
        assert calls == {index: 1 for index in calls}
        model.generate(pixels, ids, max_new_tokens=5, eos_token_id=[])
    assert calls == {index: 2 for index in calls}  # the prefill only; four decoding steps call no injector


def test_injection_stats_are_what_the_injectors_compute_on_the_visual_span():
    model = make_model(seed=4)
    pixels, ids = _inputs()
    seen = {}
    for index, injector in model.injectors.items():
        injector.register_forward_pre_hook(
            lambda module, args, i=int(index): seen.__setitem__(i, (args[0].clone(), args[1].clone()))
        )
    with torch.no_grad():
        output = model(pixels, ids, output_injection_stats=True)
        assert model(pixels, ids).injection_stats is None
        assert sorted(output.injection_stats) == sorted(seen)
        for index, (visual, stacks) in seen.items():
            injector = model.injectors[str(index)]
            assert visual.shape[1] == model.num_visual_tokens
            mixed, weights = injector.router(visual, stacks)
            gate = torch.sigmoid(injector.gate_proj(torch.cat([injector.hidden_norm(visual),
                                                               injector.detail_norm(mixed)], dim=-1)))
            torch.testing.assert_close(output.injection_stats[index].gate_mean, gate.mean(dim=-1))
            torch.testing.assert_close(output.injection_stats[index].router_weights, weights)
