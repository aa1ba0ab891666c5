"""``rsfuse viz``: the injection picture (image, gate heat maps, router bars) and the loss curve."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from factories.instructions import write_png
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viz") / "micro"
    make_model(seed=5).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


def test_stack_labels_follow_the_stack_order():
    config = make_model().config
    labels = viz.stack_labels(config)
    assert len(labels) == config.num_stacks == 24
    # scale -> layer -> phase (r-major): the first four share scale and layer, phases in order.
    assert labels[:5] == ["1× L1 (0,0)", "1× L1 (0,1)", "1× L1 (1,0)", "1× L1 (1,1)", "1× L2 (0,0)"]
    assert labels[12].startswith("0.5× L1")


def test_record_injection_and_figure_panels():
    model = make_model(seed=1)
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([[1, 50, 60, 70]])
    records, tokens = viz.record_injection(model, pixels, ids, max_new_tokens=2)
    assert [r.layer for r in records] == [1, 3]
    for record in records:
        assert record.router_weights.shape == (24,)
        assert torch.allclose(record.router_weights.sum(), torch.tensor(1.0), atol=1e-5)
        assert record.gate_mean.shape == (64,) and bool(((record.gate_mean > 0) & (record.gate_mean < 1)).all())
    image = Image.new("RGB", (32, 32), (10, 120, 40))
    figure = viz.injection_figure(image, records, viz.stack_labels(model.config), question="q?", answer="a")
    labels = [axis.get_label() for axis in figure.axes]
    assert labels[:3] == ["image", "gate:1", "gate:3"] and "router:1" in labels and "router:3" in labels
    router_axis = next(axis for axis in figure.axes if axis.get_label() == "router:1")
    assert len(router_axis.patches) == 24
    assert [t.get_text() for t in router_axis.get_xticklabels()] == viz.stack_labels(model.config)
    heights = torch.tensor([patch.get_height() for patch in router_axis.patches], dtype=torch.float32)
    assert torch.allclose(heights, records[0].router_weights, atol=1e-6)
    gate_axis = next(axis for axis in figure.axes if axis.get_label() == "gate:3")
    heat = gate_axis.get_images()[-1].get_array()
    assert heat.shape == (8, 8)
    assert torch.allclose(torch.as_tensor(heat.data).flatten().float(), records[1].gate_mean, atol=1e-6)


def test_token_router_is_averaged_over_tokens():
    model = make_model(seed=2, router_mode="token")
    seen: dict[int, torch.Tensor] = {}  # the per-token router weights [N, K] of each injector's last call

    def keep(layer):
        return lambda module, inputs, output: seen.__setitem__(layer, output[1][0].detach().clone())

    for name, injector in model.injectors.items():
        injector.router.register_forward_hook(keep(int(name)))
    records, _ = viz.record_injection(model, torch.randn(1, 3, 32, 32), torch.tensor([[1, 40, 41]]),
                                      max_new_tokens=1)
    assert all(r.per_token_router and r.router_weights.shape == (24,) for r in records)
    assert sorted(seen) == [r.layer for r in records]
    for record in records:
        per_token = seen[record.layer]
        assert per_token.shape == (64, 24)
        expected = per_token.sum(dim=0) / per_token.shape[0]
        torch.testing.assert_close(record.router_weights, expected, rtol=0, atol=1e-6)
        # Tokens disagree, so the first token (or any single one) is not the mean.
        assert (per_token[0] - expected).abs().max() > 1e-3


def test_model_without_injectors_is_refused():
    with pytest.raises(ValueError, match="no detail injectors"):
        viz.record_injection(make_model(detail=False), torch.randn(1, 3, 32, 32), torch.tensor([[1, 5]]))


@pytest.mark.slow
def test_cli_writes_the_png(model_dir, tmp_path):
    image = write_png(tmp_path / "scene.png", 48, 40, (30, 90, 160))
    out = tmp_path / "viz.png"
    code = viz.main(["--model", str(model_dir), "--image", str(image), "--question", "How many ships are there?",
                     "--out", str(out), "--max-new-tokens", "3"])
    assert code == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(out).size[0] > 300


def test_loss_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "loss": 5.0 / s, "lr": 1e-3 * (1 - s / 20)} for s in range(1, 21)]
    lines[9]["val_loss"] = 0.9
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 21, "lo')
    assert viz.main(["loss", str(run)]) == 0
    assert (run / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    figure = viz.loss_figure(lines)
    assert [axis.get_label() for axis in figure.axes] == ["loss", "lr"]
    loss_axis = figure.axes[0]
    assert len(loss_axis.get_lines()) == 3  # raw, smoothed, validation
    assert list(loss_axis.get_lines()[0].get_xdata()) == list(range(1, 21))


def test_loss_curve_errors(tmp_path, capsys):
    assert viz.main(["loss", str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert viz.main(["loss", str(tmp_path)]) == 2
    assert "no record with a numeric 'loss'" in capsys.readouterr().err
