"""``studies/attention_to_objects.py``: object cells by hand, attention read through the public
``output_attentions``, and the diagnostic end to end on a tiny benchmark and model."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse.synthetic.benchmark import generate

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("attention_to_objects", REPO / "studies" / "attention_to_objects.py")
probe = importlib.util.module_from_spec(spec)
sys.modules.setdefault("attention_to_objects", probe)
spec.loader.exec_module(probe)


def test_object_cells_by_hand():
    assert probe.object_cells([{"bbox": [10, 10, 14, 12]}], 224, 8) == [0]
    # 28-px cells: x 20..39 spans columns 0-1, y 20..29 rows 0-1; a second object in the last cell.
    assert probe.object_cells([{"bbox": [20, 20, 40, 30]}, {"bbox": [220, 220, 224, 224]}], 224, 8) == [0, 1, 8, 9, 63]


def test_the_study_reads_attention_through_the_public_forward_without_changing_it():
    model = make_model(seed=3)
    pixels = torch.rand(1, 3, model.config.input_size, model.config.input_size)
    ids = torch.tensor([[1, 20, 30, -200, 40, 50]])
    with torch.no_grad():
        plain = model(pixels, ids)
        recorded = model(pixels, ids, output_attentions=True)
    torch.testing.assert_close(recorded.logits, plain.logits, atol=2e-5, rtol=1e-5)
    assert len(recorded.attentions) == model.config.llm.num_hidden_layers
    real = plain.attention_mask[0]
    for weights in recorded.attentions:  # [1, heads, T, T]: causal, rows of real queries sum to one
        assert weights.shape[-1] == weights.shape[-2] == plain.logits.shape[1]
        assert torch.all(weights[0].triu(1) == 0)
        torch.testing.assert_close(weights[0][:, real].sum(-1), torch.ones(weights.shape[1], int(real.sum())))
    assert "layers.attention =" not in (REPO / "studies" / "attention_to_objects.py").read_text()  # no patching


def test_sequence_layout_finds_the_prompt_token_that_predicts_the_answer():
    for placement in ("prefix", "token"):
        model = make_model(seed=4, image_placement=placement)
        pixels = torch.rand(1, 3, model.config.input_size, model.config.input_size)
        ids = [1, 20, 30, -200, 40, 50]
        with torch.no_grad():
            logits = model(pixels, torch.tensor([ids])).logits[0]
            first_new = model.generate(pixels, torch.tensor([ids]), max_new_tokens=1)[0, 0]
        first, visual_count, last = probe.sequence_layout(placement, ids, logits.shape[0])
        assert visual_count == model.config.num_visual_tokens
        assert first == (0 if placement == "prefix" else 3)
        assert logits[last].argmax() == first_new


def test_end_to_end_on_a_tiny_benchmark(tmp_path):
    data = tmp_path / "data"
    generate(data, n_images=100, seed=0, size=112, workers=1)
    model_dir = tmp_path / "model"
    make_model(seed=5).save_pretrained(model_dir, tokenizer=tiny_tokenizer_dir())
    out = tmp_path / "attention.json"
    assert probe.main(["--model", str(model_dir), "--data", str(data), "--limit", "3", "--read-questions", "12",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["find"]) <= {"colour", "position", "count"} and result["find"]
    for layers in result["find"].values():
        assert list(layers) == [f"layer {index}" for index in range(1, 5)]
        for figures in layers.values():
            assert 1 <= figures["questions"] <= 3
            assert 0 < figures["image_mass"] <= 1 and figures["object_lift"] > 0
    assert result["read"]["colour"]["questions"] == 12
    for figures in result["read"].values():
        assert 10 <= figures["questions"] <= 12
        assert list(figures["held_out_accuracy"]) == [f"layer {index}" for index in range(1, 5)]
        for accuracies in figures["held_out_accuracy"].values():
            assert all(0 <= accuracies[key] <= 1 for key in ("object_token", "answer_position", "majority"))


def test_held_out_accuracy_reads_a_linear_label_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, generator=generator)
    readable = (features[:, 2] > 0).long() + 2 * (features[:, 4] > 0).long()  # four classes, linearly separable
    accuracy, majority = probe.held_out_accuracy(features, readable)
    assert accuracy > 0.95 and majority < 0.4
    noise = torch.randint(0, 4, (400,), generator=generator)
    assert probe.held_out_accuracy(features, noise)[0] < 0.45
