"""``bench/detail_ceiling.py``: the object targets by hand, and the probe end to end on a tiny benchmark and tower."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from rsfuse.checkpoints.clip import save_clip_vision
from rsfuse.data.synthetic import generate
from rsfuse.encoders.clip import CLIPVisionTower

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


ceiling = _load("detail_ceiling", REPO / "bench" / "detail_ceiling.py")
ablate = _load("ablate_synthetic", REPO / "recipes" / "ablate_synthetic.py")


def test_object_targets_count_and_clip():
    scenes = [{"objects": [{"kind": "ship"}] * 7 + [{"kind": "plane"}]}, {"objects": []}]
    presence, counts = ceiling.object_targets(scenes, ["vehicle", "ship", "plane"])
    assert presence.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert counts.tolist() == [[0, ceiling.MAX_COUNT, 1], [0, 0, 0]]


def test_probe_shapes():
    probe = ceiling.PoolingProbe(features=12, kinds=4, width=16, queries=2)
    presence, counts = probe(torch.randn(3, 10, 12))
    assert presence.shape == (3, 4) and counts.shape == (3, 4, ceiling.MAX_COUNT + 1)


@pytest.mark.slow
def test_end_to_end_on_a_tiny_benchmark(tmp_path):
    from rsfuse.recipes.config import load_config
    from rsfuse.recipes.train import build_model_config

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
    assert set(result["probes"]) == {"global", "global+stacks", "stacks", "canvas", "global+phase-mean"}
    for scores in result["probes"].values():
        assert len(scores["presence"]) == len(result["kinds"]) == len(scores["count"])
        assert all(0.0 <= value <= 1.0 for value in scores["presence"] + scores["count"])
    with pytest.raises(ValueError, match="no detail branch"):
        ceiling.main([*argv, "--extra", "model.detail=false"])
