"""``MFRSVLM`` and ``MFRSVLMConfig``: composition, sequence layout, injection, training forward/backward."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from factories.mfrsvlm import TowerCounter, make_model
from rsfuse.model import MFRSVLM, MFRSVLMConfig

IMAGE = -200


def _pixels(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ids(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----- config ---------------------------------------------------------------------------------------------------------
def test_paper_config_has_the_published_values():
    config = MFRSVLMConfig.paper()
    assert (config.global_size, config.canvas_size, config.base_window) == (336, 672, 336)
    assert config.global_layer == 24 and config.detail_layers == (8, 16, 24)
    assert config.injection_layers == (2, 4, 6, 8) and config.injection_layer_indices == (1, 3, 5, 7)
    assert config.num_stacks == 24 and config.num_visual_tokens == 576
    assert config.residual_scale_init == 1.0 and config.window_scales == (1.0, 0.5)
    assert MFRSVLMConfig.paper(injection_layers=[4, 6, 8]).injection_layer_indices == (3, 5, 7)
    assert MFRSVLMConfig.paper(global_layer=-2).global_hidden_index == 23
    assert MFRSVLMConfig.paper(detail=False).injection_layer_indices == ()


def test_config_round_trips_through_json_and_names_bad_fields():
    config = MFRSVLMConfig.tiny(canvas_source="image", image_placement="token", router_mode="token")
    restored = MFRSVLMConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(ValueError, match="injection_layers: layer 9 .* 4-layer decoder"):
        MFRSVLMConfig.tiny(injection_layers=[2, 9])
    with pytest.raises(ValueError, match="detail_layers: hidden state 7 .* 6-block"):
        MFRSVLMConfig.tiny(detail_layers=[2, 7])
    with pytest.raises(ValueError, match="canvas_source"):
        MFRSVLMConfig.tiny(canvas_source="bicubic")
    with pytest.raises(ValueError, match="stack_factor"):
        MFRSVLMConfig.tiny(stack_factor=4)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['windows'\]"):
        MFRSVLMConfig.from_dict({**config.to_dict(), "windows": 3})


@pytest.mark.slow
def test_tiny_preset_runs_end_to_end():
    torch.manual_seed(0)
    model = MFRSVLM(MFRSVLMConfig.tiny()).eval()
    with torch.no_grad():
        output = model(_pixels(1, 112), _ids(1, 6) % 256)
    assert output.logits.shape == (1, 64 + 6, 256)


@torch.no_grad()
def test_tiny_preset_end_to_end_values():
    """The tiny preset with its own initialisation, checked by value: the loss is the causal-LM cross-entropy
    recomputed by hand from the logits (visual, prompt and padding positions ignored), text logits depend on the
    image, each position sees only the past, and with residual scales 0 the model equals the global-only model
    (detail=False) holding the same weights."""
    torch.manual_seed(0)
    config = MFRSVLMConfig.tiny()
    model = MFRSVLM(config).eval()
    tokens, vocab = model.num_visual_tokens, config.llm.vocab_size
    pixels = _pixels(2, 112, seed=3)
    ids = _ids(2, 8, seed=4) % (vocab - 3) + 3
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    output = model(pixels, ids, attention, labels)
    logits = output.logits.double()
    assert logits.shape == (2, tokens + 8, vocab)
    # The loss by hand: position p predicts the token at p + 1; mean over every counted target of the batch.
    total, count = 0.0, 0
    for row in range(2):
        for position in range(7):  # text position `position` predicts text token `position + 1`
            if labels[row, position + 1] == -100 or attention[row, position + 1] == 0:
                continue
            scores = logits[row, tokens + position]
            target = int(ids[row, position + 1])
            total += float(torch.logsumexp(scores, dim=0) - scores[target])
            count += 1
    assert count == 5 + 3  # row 0: targets 3..7; row 1: targets 3..5 (6, 7 are padding)
    assert abs(output.loss.item() - total / count) <= 1e-5 * max(1.0, total / count)
    # Text logits depend on the image; the same inputs give the same logits.
    other = model(torch.roll(pixels, 1, dims=0), ids, attention).logits
    assert (other[:, tokens:] - output.logits[:, tokens:]).abs().amax(dim=(1, 2)).min() > 1e-3
    torch.testing.assert_close(model(pixels, ids, attention).logits, output.logits, rtol=0, atol=0)
    # Causal: changing the last text token leaves every earlier position unchanged.
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (vocab - 3) + 3
    after = model(pixels[:1], changed[:1]).logits
    before = model(pixels[:1], ids[:1]).logits
    torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=1e-5, atol=1e-5)
    assert (after[:, -1] - before[:, -1]).abs().max() > 1e-3
    # Residual scales 0: exactly the global-only model with the same weights; scales 1 (the preset's): not.
    silent = MFRSVLM(MFRSVLMConfig.tiny(residual_scale_init=0.0)).eval()
    baseline = MFRSVLM(MFRSVLMConfig.tiny(detail=False)).eval()
    state = model.state_dict()
    silent.load_state_dict({k: (torch.zeros_like(v) if k.endswith("residual_scale") else v) for k, v in state.items()})
    baseline.load_state_dict({k: v for k, v in state.items() if not k.startswith("injectors.")}, strict=True)
    plain = baseline(pixels[:1], ids[:1]).logits
    torch.testing.assert_close(silent(pixels[:1], ids[:1]).logits, plain, rtol=1e-5, atol=1e-5)
    assert config.residual_scale_init == 1.0
    assert (before - plain).abs().max() > 1e-3


def test_importing_rsfuse_stays_light():
    code = (
        "import sys, rsfuse\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert rsfuse.MFRSVLMConfig.paper().num_stacks == 24\n"
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- structure ------------------------------------------------------------------------------------------------------
def test_tower_is_registered_once_and_keys_are_stable():
    model = make_model()
    keys = list(model.state_dict())
    assert {key.split(".")[0] for key in keys} == {"vision_tower", "projector", "llm", "injectors"}
    assert model.canvas.tower is model.vision_tower
    assert sorted({key.split(".")[1] for key in keys if key.startswith("injectors.")}) == ["1", "3"]
    assert "injectors.1.router.query.0.weight" in keys and "injectors.3.residual_scale" in keys
    assert "llm.model.layers.0.self_attn.q_proj.weight" in keys and "projector.2.bias" in keys
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(set(names)) == len([k for k in keys if not k.endswith("inv_freq")])


@torch.no_grad()
def test_detail_stacks_are_computed_once_per_forward():
    model = make_model(injection_layers=(1, 2, 3, 4))
    counter = TowerCounter(model)
    model(_pixels(3), _ids(3))
    chunk = model.canvas.chunk_size
    assert counter.calls == 1 + sum(-(-3 * grid.num_windows // chunk) for grid in model.canvas.grids)
    assert counter.images == 3 * (1 + model.canvas.windows_per_image)


@torch.no_grad()
def test_a_batch_is_encoded_in_tower_calls_of_at_most_128_windows_with_unchanged_features():
    model = make_model().eval()
    per_image = model.canvas.windows_per_image
    batch = 128 // per_image + 2  # more windows of each scale than one call takes
    pixels = _pixels(batch)
    counter = TowerCounter(model)
    chunked = model.encode_images(pixels)
    expected_calls = 1 + sum(-(-batch * grid.num_windows // 128) for grid in model.canvas.grids)
    assert counter.calls == expected_calls and counter.calls > 1 + len(model.canvas.grids)
    model.canvas.chunk_size = None
    whole = model.encode_images(pixels)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


# ----- sequence layout ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_prefix_layout_prepends_visual_tokens_and_removes_the_placeholder():
    model = make_model()
    ids = _ids()
    with_placeholder = torch.cat([ids[:, :3], torch.full((2, 1), IMAGE), ids[:, 3:]], dim=1)
    plain = model(_pixels(), ids)
    spliced = model(_pixels(), with_placeholder)
    tokens = model.num_visual_tokens
    assert plain.logits.shape == (2, tokens + ids.shape[1], 512)
    torch.testing.assert_close(spliced.logits[:, : tokens + ids.shape[1]], plain.logits)
    assert torch.equal(plain.visual_positions, torch.arange(tokens).expand(2, -1))
    assert bool(plain.attention_mask[:, :tokens].all())


@torch.no_grad()
def test_token_placement_at_the_front_equals_prefix_placement():
    prefix = make_model(seed=4)
    token = make_model(seed=4, image_placement="token")
    token.load_state_dict(prefix.state_dict())
    ids = _ids()
    front = torch.cat([torch.full((2, 1), IMAGE), ids], dim=1)
    torch.testing.assert_close(token(_pixels(), front).logits[:, :-1], prefix(_pixels(), ids).logits)
    middle = torch.cat([ids[:, :4], torch.full((2, 1), IMAGE), ids[:, 4:]], dim=1)
    output = token(_pixels(), middle)
    assert torch.equal(output.visual_positions, 4 + torch.arange(prefix.num_visual_tokens).expand(2, -1))
    assert output.logits.shape[1] == middle.shape[1] + prefix.num_visual_tokens


@torch.no_grad()
def test_zero_residual_scale_equals_the_llava_baseline_with_the_same_weights():
    detailed = make_model(seed=5, residual_scale_init=0.0)
    baseline = make_model(seed=5, detail=False)
    state = {k: v for k, v in detailed.state_dict().items() if not k.startswith("injectors.")}
    baseline.load_state_dict(state, strict=True)
    torch.testing.assert_close(detailed(_pixels(), _ids()).logits, baseline(_pixels(), _ids()).logits)
    with torch.no_grad():
        for injector in detailed.injectors.values():
            injector.residual_scale.fill_(1.0)
    assert not torch.allclose(detailed(_pixels(), _ids()).logits, baseline(_pixels(), _ids()).logits, atol=1e-3)


@torch.no_grad()
def test_text_only_samples_in_a_mixed_batch_are_not_influenced_by_visual_positions():
    model = make_model(seed=6)
    counter = TowerCounter(model)
    ids = _ids(3, 7)
    pixels = _pixels(3)
    mask = torch.tensor([True, False, True])
    mixed = model(pixels, ids, image_mask=mask)
    assert counter.images == 2 * (1 + model.canvas.windows_per_image), "text-only samples must not be encoded"
    alone = model(None, ids[1:2])
    tokens = model.num_visual_tokens
    torch.testing.assert_close(mixed.logits[1, tokens:], alone.logits[0], atol=1e-5, rtol=1e-4)
    assert not bool(mixed.attention_mask[1, :tokens].any())
    garbage = pixels.clone()
    garbage[1] = 1e3
    torch.testing.assert_close(model(garbage, ids, image_mask=mask).logits, mixed.logits)
    image_alone = model(pixels[0:1], ids[0:1])
    torch.testing.assert_close(mixed.logits[0], image_alone.logits[0], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_canvas_source_image_takes_canvas_sized_pixels():
    model = make_model(seed=7, canvas_source="image")
    output = model(_pixels(2, 64), _ids())
    assert output.logits.shape[1] == model.num_visual_tokens + 9
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 64, 64\] \(the canvas size"):
        model(_pixels(2, 32), _ids())
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 32, 32\]"):
        make_model()(_pixels(2, 64), _ids())


@torch.no_grad()
def test_reference_window_layout_changes_the_detail_features():
    spatial = make_model(seed=8)
    reference = make_model(seed=8, window_layout="reference")
    reference.load_state_dict(spatial.state_dict())
    _, spatial_stacks = spatial.encode_images(_pixels())
    _, reference_stacks = reference.encode_images(_pixels())
    assert spatial_stacks.shape == reference_stacks.shape == (2, 24, 64, 32)
    assert not torch.allclose(spatial_stacks, reference_stacks)


# ----- training -------------------------------------------------------------------------------------------------------
def test_training_forward_backward_and_loss_ignores_visual_and_prompt_positions():
    model = make_model(seed=9).train()
    ids = _ids(2, 10)
    labels = ids.clone()
    labels[:, :6] = -100  # prompt
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0  # right padding
    labels[1, 8:] = -100
    output = model(_pixels(), ids, attention, labels)
    tokens = model.num_visual_tokens
    assert bool((output.labels[:, :tokens] == -100).all())
    logits = output.logits[:, tokens:]
    targets = labels.masked_fill(attention == 0, -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 512).float(), targets[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(_pixels(), ids, attention, labels).loss.backward()
    for name, parameter in model.named_parameters():
        if name in plain_grads:
            torch.testing.assert_close(parameter.grad, plain_grads[name], msg=name)
        else:
            assert parameter.grad is None, name  # e.g. the tower's unused post_layernorm
    for name in ("injectors.1.gate_proj.weight", "injectors.3.router.key.1.weight", "projector.0.weight",
                 "vision_tower.encoder.layers.0.mlp.fc1.weight", "llm.model.layers.0.mlp.up_proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_gradient_checkpointing_enable_recomputes_tower_blocks_and_decoder_layers_in_backward():
    model = make_model(seed=5).train()
    counts = {"vision": 0, "llm": 0}
    # Pre-hooks (not forward hooks): torch's checkpoint stops recomputing as soon as the saved tensors are rebuilt,
    # possibly before a sub-module returns.
    vision_mlp = model.vision_tower.encoder.layers[0].mlp
    vision_mlp.register_forward_pre_hook(lambda *_: counts.__setitem__("vision", counts["vision"] + 1))
    model.llm.model.layers[0].mlp.register_forward_pre_hook(lambda *_: counts.__setitem__("llm", counts["llm"] + 1))
    ids = torch.randint(3, 500, (2, 6), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def forward_backward() -> dict[str, int]:
        counts.update(vision=0, llm=0)
        loss = model(pixels, ids, labels=ids).loss
        forward = dict(counts)
        loss.backward()
        return {name: counts[name] - forward[name] for name in counts}  # calls made during backward

    assert forward_backward() == {"vision": 0, "llm": 0}
    model.gradient_checkpointing_enable()
    recomputed = forward_backward()
    # The tower's first block runs once per batched call (global view + one per window scale); each is recomputed.
    assert recomputed == {"vision": 1 + len(model.config.window_scales), "llm": 1}, recomputed
    model.gradient_checkpointing_enable(vision=False, llm=True)
    assert forward_backward() == {"vision": 0, "llm": 1}
    model.gradient_checkpointing_disable()
    assert forward_backward() == {"vision": 0, "llm": 0}
