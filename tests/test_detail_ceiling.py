"""``studies/detail_ceiling.py``: the object targets by hand, and the probe end to end on a tiny benchmark and tower."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from rsfuse.checkpoints.clip import save_clip_vision
from rsfuse.synthetic.benchmark import generate
from rsfuse.encoders.clip import CLIPVisionTower

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


ceiling = _load("detail_ceiling", REPO / "studies" / "detail_ceiling.py")
sys.path.insert(0, str(REPO))  # the studies folder sits beside the package
import studies.ablate_synthetic as ablate  # noqa: E402


def _object(kind, colour="red", bbox=(10, 10, 14, 12)):
    return {"kind": kind, "colour": colour, "bbox": list(bbox)}


def _scene(objects):
    return {"image": "x.png", "scene_class": "harbor", "size": 224, "terrain": "water", "texture_seed": 0,
            "structures": [], "objects": objects}


def test_object_targets_by_hand():
    scenes = [_scene([_object("ship")] * 7 + [_object("plane", "blue", (200, 150, 205, 155))]), _scene([])]
    targets = ceiling.object_targets(scenes, ["vehicle", "ship", "plane"])
    assert targets["presence"].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert targets["count"].tolist() == [[0, ceiling.MAX_COUNT, 1], [0, 0, 0]]
    # Colour and quadrant only where the kind has exactly one instance: the plane, blue, bottom right.
    assert targets["colour"].tolist() == [[-1, -1, 1], [-1, -1, -1]]
    assert targets["position"].tolist() == [[-1, -1, 3], [-1, -1, -1]]


def test_probe_shapes():
    probe = ceiling.PoolingProbe(features=12, tokens=10, kinds=4, width=16, queries=2)
    logits = probe(torch.randn(3, 10, 12))
    assert {head: tuple(value.shape) for head, value in logits.items()} == {
        "presence": (3, 4, 1), "count": (3, 4, ceiling.MAX_COUNT + 1), "colour": (3, 4, 5), "position": (3, 4, 4)}


def test_weighted_accuracy_by_hand(tmp_path):
    records = [{"small_object": True, "question_type": "existence", "kind": "ship"}] * 3
    records += [{"small_object": True, "question_type": "colour", "kind": "plane"}]
    records += [{"small_object": False, "question_type": "scene", "kind": None}] * 5
    records += [{"small_object": True, "question_type": "count", "kind": "ship"}]  # beyond the limit
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    mix = ceiling.question_mix(path, limit=9)
    assert mix == {"existence": {"ship": 3}, "colour": {"plane": 1}}
    scores = {"presence": [None, 0.5, 1.0], "count": [0.0, 0.0, 0.0], "colour": [None, None, 1.0],
              "position": [None, None, None]}
    assert ceiling.weighted_accuracy(scores, mix, ["vehicle", "ship", "plane"]) == 62.5  # (3 * 0.5 + 1) / 4


@pytest.mark.slow
def test_end_to_end_on_a_tiny_benchmark(tmp_path):
    from rsfuse.recipes.train_args import load_config
    from rsfuse.train.setup import build_model_config

    data = tmp_path / "data"
    generate(data, n_images=40, seed=0, size=112, workers=1)
    model_keys = [item for item in ablate.STUDY_OVERRIDES if item.startswith("model.")]
    vision = build_model_config(load_config(None, model_keys), None).vision
    save_clip_vision(tmp_path / "tower", vision, CLIPVisionTower(vision).state_dict())
    out = tmp_path / "ceiling.json"
    argv = ["--data", str(data), "--tower", str(tmp_path / "tower"), "--epochs", "1", "--batch-size", "8",
            "--out", str(out)]
    assert ceiling.main(argv) == 0
    result = json.loads(out.read_text())
    train_scenes = [s for s in json.loads((data / "scenes.json").read_text()) if s["split"] == "train"]
    assert result["images"] == len(train_scenes)
    assert result["held_out"] == len(train_scenes) - int(0.8 * len(train_scenes))
    assert tuple(result["probes"]) == ceiling.INPUTS
    for scores in result["probes"].values():
        for head in ceiling.HEADS:
            assert len(scores[head]) == len(result["kinds"])
            assert all(value is None or 0.0 <= value <= 1.0 for value in scores[head])
        assert 0.0 <= scores["weighted_small_object"] <= 100.0
    assert result["ceiling_gain_points"] == pytest.approx(
        result["best_detail_weighted_small_object"] - result["probes"]["global"]["weighted_small_object"], abs=0.01)
    assert ceiling.main([*argv, "--inputs", "global,canvas"]) == 0
    assert list(json.loads(out.read_text())["probes"]) == ["global", "canvas"]
    with pytest.raises(SystemExit):
        ceiling.main([*argv, "--inputs", "global,bogus"])
    with pytest.raises(ValueError, match="no detail branch"):
        ceiling.main([*argv, "--extra", "model.detail=false"])
