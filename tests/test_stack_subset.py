"""``studies/stack_subset.py``: a model evaluated with only some of its detail stacks — which stacks are kept, the
routers' weights renormalised over them, and the evaluation equal to ``rsfuse eval``'s without a subset."""

import json
import sys
from pathlib import Path

import pytest
import torch
from factories.mfrsvlm import make_model, write_study_folder

from rsfuse.cli import main as rsfuse_main
from rsfuse.processor import MFRSVLMProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the studies folder sits beside the package

from studies import stack_subset as study  # noqa: E402

# make_model: window scales (1.0, 0.5), tower layers (1, 2, 3), factor 2 -> K = 24 stacks, scale-major, 4 phases each.
LAST_LAYER = [8, 9, 10, 11, 20, 21, 22, 23]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    return write_study_folder(tmp_path_factory.mktemp("stack_subset"))


def _inputs(tiny_study):
    records = json.loads((tiny_study / "data" / "test.json").read_text())[:3]
    processor = MFRSVLMProcessor.from_pretrained(tiny_study / "model")
    questions = [record["conversations"][0]["value"].replace("<image>", "").strip() for record in records]
    return processor(images=[str(tiny_study / "data" / r["image"]) for r in records], text=questions,
                     padding_side="right")


@torch.no_grad()
def test_kept_stacks_and_router_weights_renormalised_over_them(tiny_study):
    model = make_model(seed=5)
    inputs = _inputs(tiny_study)
    _, full_stacks = model.encode_images(inputs["pixel_values"])
    full = model(**inputs, output_injection_stats=True).injection_stats
    kept = study.keep_stacks(model, layers=[3])
    assert [(scale, layer) for scale, layer, _, _ in kept] == [(1.0, 3)] * 4 + [(0.5, 3)] * 4
    _, stacks = model.encode_images(inputs["pixel_values"])
    assert torch.equal(stacks, full_stacks[:, LAST_LAYER])
    restricted = model(**inputs, output_injection_stats=True).injection_stats
    # Before the first injection nothing depends on the stacks: its router sees the same hidden states, so its
    # weights are the full model's, renormalised over the kept stacks.
    first = min(full)
    weights = full[first].router_weights[..., LAST_LAYER]
    torch.testing.assert_close(restricted[first].router_weights, weights / weights.sum(dim=-1, keepdim=True))
    # A second call chooses from all the stacks again, not from the subset.
    kept = study.keep_stacks(model, scales=[0.5])
    assert [layer for _, layer, _, _ in kept] == [1] * 4 + [2] * 4 + [3] * 4
    assert torch.equal(model.encode_images(inputs["pixel_values"])[1], full_stacks[:, 12:])


def test_layers_and_scales_the_model_does_not_fuse_are_refused():
    model = make_model(seed=5)
    with pytest.raises(ValueError, match=r"tower layer \[7\] is not fused by this model \(its layers: \[1, 2, 3\]\)"):
        study.keep_stacks(model, layers=[7])
    with pytest.raises(ValueError, match=r"tower scale \[0.25\] is not fused"):
        study.keep_stacks(model, scales=[0.25])
    with pytest.raises(ValueError, match="no detail stacks"):
        study.keep_stacks(make_model(seed=5, detail=False), layers=[3])


def test_without_a_subset_it_is_rsfuse_eval(tiny_study, tmp_path, capsys):
    common = ["--model", str(tiny_study / "model"), "--data", str(tiny_study / "data"), "--limit", "6",
              "--batch-size", "4", "--max-new-tokens", "3"]
    assert study.main([*common, "--out", str(tmp_path / "all.json")]) == 0
    probe = json.loads((tmp_path / "all.json").read_text())
    assert rsfuse_main(["eval", "task=synthetic", f"model={tiny_study / 'model'}",
                        f"data={tiny_study / 'data' / 'test.json'}", f"image_root={tiny_study / 'data'}",
                        f"output_dir={tmp_path / 'eval'}", "batch_size=4", "max_new_tokens=3", "limit=6",
                        "progress=false"]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())["result"]
    assert probe["questions"] == 6 and len(probe["kept_stacks"]) == 24
    assert probe["small_object"] == result["by_object_size"]["small"]["exact_accuracy"]
    assert probe["overall"] == result["avg"]["exact_accuracy"]
    assert probe["per_type"] == {kind: row["exact_accuracy"] for kind, row in result["per_type"].items()}
    assert study.main([*common, "--layers", "3", "--out", str(tmp_path / "last.json")]) == 0
    assert len(json.loads((tmp_path / "last.json").read_text())["kept_stacks"]) == 8
    capsys.readouterr()
    assert study.main([*common, "--layers", "9"]) == 2
    assert "tower layer [9] is not fused" in capsys.readouterr().err
