"""llava-hf checkpoints (transformers' ``LlavaForConditionalGeneration`` layout) loaded by rsfuse.

The reference is transformers itself: a tiny random ``LlavaForConditionalGeneration`` saved with ``save_pretrained``
(safetensors) and run on the same pixel tensor. transformers is fed the prompt with the image token repeated once
per visual token (what its processor produces); rsfuse gets (a) the same expanded ids and (b) one image token.
"""

import json

import pytest
import torch
import transformers

from factories.llava_hf import IMAGE_TOKEN, KEY_STYLES, NUM_VISUAL_TOKENS, VOCAB_SIZE, write_hf_llava
from factories.mfrsvlm import write_llava_folder
from rsfuse import MFRSVLM
from rsfuse.cli import main as rsfuse_main
from rsfuse.model.convert import main as convert_main

N = NUM_VISUAL_TOKENS
EOS = 2


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return write_hf_llava(tmp_path_factory.mktemp("llava_hf") / "model", seed=3)


@pytest.fixture(scope="module")
def loaded(llava_dir):
    folder, _ = llava_dir
    return MFRSVLM.from_parts(vision=None, llava=folder)


def _pixels(batch: int = 2, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def _text(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, IMAGE_TOKEN, (length,), generator=generator).tolist()


def _prompts(repeat: int) -> torch.Tensor:
    """Two prompts of one length with the image at different places: BOS, text, image × repeat, text."""
    rows = []
    for row, before in enumerate((2, 5)):
        text = _text(8, seed=row)
        rows.append([1, *text[:before], *[IMAGE_TOKEN] * repeat, *text[before:]])
    return torch.tensor(rows)


def _hf_logits(hf, pixels: torch.Tensor, ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    return hf(input_ids=ids, pixel_values=pixels, attention_mask=attention_mask).logits


def _until_eos(row: torch.Tensor) -> list[int]:
    tokens = row.tolist()
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


# ----- parity with transformers -----------------------------------------------------------------------------------
@torch.no_grad()
def test_llava_hf_folder_loads_as_llava_1_5(loaded):
    config = loaded.config
    assert config.detail is False and config.image_placement == "token"
    assert config.image_token_index == IMAGE_TOKEN
    assert config.global_hidden_index == 2  # vision_feature_layer -2 of a 3-block tower (hidden states 0..3)
    assert config.injection_layer_indices == () and len(loaded.injectors) == 0
    assert config.vision.image_size == 56 and config.llm.vocab_size == VOCAB_SIZE


@torch.no_grad()
def test_logits_equal_transformers_at_text_and_visual_positions(llava_dir, loaded):
    _, hf = llava_dir
    pixels, expanded = _pixels(), _prompts(N)
    reference = _hf_logits(hf, pixels, expanded)
    length = reference.shape[1]
    visual = torch.stack([torch.arange(2, 2 + N) + 1, torch.arange(5, 5 + N) + 1])  # after BOS and the leading text
    for ids in (expanded, _prompts(1)):
        logits = loaded(pixels, ids).logits
        assert logits.shape[1] >= length
        ours = logits[:, :length]
        for row in range(2):
            visual_rows = visual[row]
            text_rows = torch.tensor([j for j in range(length) if j not in set(visual_rows.tolist())])
            torch.testing.assert_close(ours[row, visual_rows], reference[row, visual_rows], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours[row, text_rows], reference[row, text_rows], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_greedy_tokens_equal_transformers(llava_dir, loaded):
    _, hf = llava_dir
    pixels, expanded = _pixels(), _prompts(N)
    reference = hf.generate(
        input_ids=expanded, pixel_values=pixels, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=EOS
    )[:, expanded.shape[1] :]
    llava_placeholder = _prompts(1).masked_fill(_prompts(1) == IMAGE_TOKEN, -200)  # rsfuse's templates write −200
    for ids in (expanded, _prompts(1), llava_placeholder):
        ours = loaded.generate(pixels, ids, max_new_tokens=8, eos_token_id=EOS)
        for row in range(2):
            assert _until_eos(ours[row]) == _until_eos(reference[row])


@torch.no_grad()
def test_left_padded_batch_generates_what_transformers_generates(llava_dir, loaded):
    _, hf = llava_dir
    pixels = _pixels()
    short = [1, *_text(3, seed=4), *[IMAGE_TOKEN] * N, *_text(2, seed=5)]
    long = [1, *_text(6, seed=6), *[IMAGE_TOKEN] * N, *_text(4, seed=7)]
    pad = len(long) - len(short)
    ids = torch.tensor([[0] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    reference = hf.generate(
        input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6, do_sample=False, pad_token_id=0,
        eos_token_id=EOS,
    )[:, ids.shape[1] :]
    ours = loaded.generate(pixels, ids, mask, max_new_tokens=6, eos_token_id=EOS)
    for row in range(2):
        assert _until_eos(ours[row]) == _until_eos(reference[row])


@pytest.mark.parametrize("key_style", [style for style in KEY_STYLES if style != "saved"])
@torch.no_grad()
def test_every_stored_key_spelling_and_a_sparse_config_load_the_same_model(tmp_path, key_style):
    folder, hf = write_hf_llava(
        tmp_path / key_style, seed=4, key_style=key_style, sparse_config=True, image_token_field="image_token_id"
    )
    text_config = json.loads((folder / "config.json").read_text())["text_config"]
    assert "rms_norm_eps" not in text_config and "hidden_act" not in text_config  # defaults left out, as on the Hub
    model = MFRSVLM.from_parts(vision=None, llava=folder)
    pixels, ids = _pixels(), _prompts(N)
    reference = _hf_logits(hf, pixels, ids)
    torch.testing.assert_close(model(pixels, ids).logits[:, : reference.shape[1]], reference, rtol=1e-4, atol=1e-4)


def test_vision_defaults_to_the_llava_hf_folder(llava_dir):
    """``vision`` omitted: the tower comes from the llava-hf folder (needs ``from_parts(vision=None)`` as default)."""
    folder, hf = llava_dir
    model = MFRSVLM.from_parts(llava=folder)
    expected = hf.model.vision_tower.embeddings.patch_embedding.weight
    assert torch.equal(model.vision_tower.state_dict()["embeddings.patch_embedding.weight"], expected)


@torch.no_grad()
def test_from_pretrained_reads_a_llava_hf_folder_like_from_parts(llava_dir, loaded):
    folder, _ = llava_dir
    model = MFRSVLM.from_pretrained(folder)
    assert model.config.to_dict() == loaded.config.to_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@torch.no_grad()
def test_overrides_win_over_the_llava_1_5_defaults(llava_dir):
    folder, hf = llava_dir
    model = MFRSVLM.from_parts(vision=None, llava=folder, global_layer=3, detail=True, injection_layers=[1, 2],
                               residual_scale_init=0.0, blend="mean")
    assert model.config.global_hidden_index == 3 and model.config.detail and model.config.image_placement == "token"
    assert model.config.blend == "mean"  # a 4×4-token tower's half-size windows are 2 tokens wide: Hann weights 0
    assert sorted(model.injectors) == ["0", "1"]
    # With residual scale 0 the injectors add nothing: transformers' logits with hidden state 3 instead of 2.
    pixels, ids = _pixels(), _prompts(N)
    reference = hf(input_ids=ids, pixel_values=pixels, vision_feature_layer=3).logits
    torch.testing.assert_close(model(pixels, ids).logits[:, : reference.shape[1]], reference, rtol=1e-4, atol=1e-4)


# ----- refused settings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"vision_feature_layer": [-2, -1]}, "vision_feature_layer"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"vision_feature_layer": -5}, "vision_feature_layer -5"),
    ],
)
def test_unsupported_settings_are_refused_by_name(tmp_path, capsys, options, setting):
    """Several feature layers (a list) and "full" (CLS kept) have no rsfuse counterpart; an index past the tower too."""
    folder, _ = write_hf_llava(tmp_path / "llava", seed=1, **options)
    with pytest.raises(ValueError, match=setting):
        MFRSVLM.from_parts(vision=None, llava=folder)
    assert convert_main([str(folder), str(tmp_path / "out")]) != 0
    assert setting in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_liuhaotian_folder_still_needs_a_tower(tmp_path):
    folder, _ = write_llava_folder(tmp_path / "liuhaotian")
    with pytest.raises(ValueError, match="vision=CLIP_DIR"):
        MFRSVLM.from_parts(vision=None, llava=folder)


# ----- rsfuse convert ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_convert_writes_an_rsfuse_folder_with_the_same_model(tmp_path, llava_dir, loaded, capsys):
    folder, hf = llava_dir
    assert rsfuse_main(["convert", str(folder), str(tmp_path / "converted")]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = MFRSVLM.from_pretrained(tmp_path / "converted")
    assert converted.config == loaded.config
    pixels, ids = _pixels(), _prompts(1)
    assert torch.equal(converted(pixels, ids).logits, loaded(pixels, ids).logits)
    reference = _hf_logits(hf, pixels, _prompts(N))
    torch.testing.assert_close(converted(pixels, ids).logits[:, : reference.shape[1]], reference, rtol=1e-4, atol=1e-4)
    assert transformers.LlavaForConditionalGeneration  # the reference class the folder came from
