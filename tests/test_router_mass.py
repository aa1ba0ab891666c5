"""``studies/router_mass.py``: router weights summed per tower layer and window scale, by hand and end to end."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from factories.mfrsvlm import make_model, write_study_folder
from rsfuse.injection.visual import InjectionStats
from rsfuse.processor import MFRSVLMProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the studies folder sits beside the package

from studies import router_mass as study  # noqa: E402


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    return write_study_folder(tmp_path_factory.mktemp("router_mass"))


def test_weights_are_summed_per_layer_and_scale_by_hand(tiny_study, monkeypatch):
    model = make_model(seed=5)  # scales (1.0, 0.5), layers (1, 2, 3), factor 2: K = 24, scale-major
    records = json.loads((tiny_study / "data" / "test.json").read_text())[:2]
    weights = torch.zeros(2, 24)
    weights[0, 0] = 1.0  # sample 0: all on scale 1.0, layer 1
    weights[1, 23] = 0.75  # sample 1: scale 0.5, layer 3 ...
    weights[1, 4] = 0.25  # ... and scale 1.0, layer 2
    stats = {1: InjectionStats(torch.full((2, 16), 0.5), weights), 3: InjectionStats(torch.ones(2, 16), weights)}
    monkeypatch.setattr(model, "forward", lambda *args, **kwargs: SimpleNamespace(injection_stats=stats))
    processor = MFRSVLMProcessor.from_pretrained(tiny_study / "model")
    result = study.router_mass(model, processor, records, tiny_study / "data")
    assert list(result) == ["before decoder layer 2", "before decoder layer 4"]
    figures = result["before decoder layer 2"]
    assert figures["router_weight_per_tower_layer"] == {"1": 0.5, "2": 0.125, "3": 0.375}
    assert figures["router_weight_per_window_scale"] == {"0.5": 0.375, "1": 0.625}
    assert figures["gate_mean"] == 0.5 and result["before decoder layer 4"]["gate_mean"] == 1.0
    assert figures["uniform_per_tower_layer"] == 0.3333


def test_end_to_end_on_a_tiny_benchmark(tiny_study, tmp_path, capsys):
    out = tmp_path / "mass.json"
    assert study.main(["--model", str(tiny_study / "model"), "--data", str(tiny_study / "data"), "--limit", "5",
                       "--batch-size", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["questions"] == 5
    assert list(result["per_injection_layer"]) == ["before decoder layer 2", "before decoder layer 4"]
    for figures in result["per_injection_layer"].values():
        assert sum(figures["router_weight_per_tower_layer"].values()) == pytest.approx(1, abs=1e-3)
        assert sum(figures["router_weight_per_window_scale"].values()) == pytest.approx(1, abs=1e-3)
        assert 0 < figures["gate_mean"] < 1
    assert study.main(["--model", str(tiny_study / "model"), "--data", str(tmp_path)]) == 2
    assert "test.json not found" in capsys.readouterr().err
