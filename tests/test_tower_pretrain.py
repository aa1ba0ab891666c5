"""``rsfuse.synthetic.tower_pretrain``: the per-patch labels by hand, a short pretraining writes a tower folder that
``read_clip_vision`` and the training recipe's ``model.vision_weights`` load, and bad settings are named."""

import json

import numpy as np
import pytest
import torch

from rsfuse.checkpoints.clip import read_clip_vision
from rsfuse.synthetic.benchmark import generate
from rsfuse.recipes.config import ConfigError
from rsfuse.recipes.train_args import load_config
from rsfuse.train.setup import build_model_config, load_tower_weights
from rsfuse.data import ImageProcessor
from rsfuse.encoders.windows import resize_to
from rsfuse.synthetic.tower_pretrain import (
    LABELS,
    TowerPretrainSettings,
    _Images,
    patch_labels,
    pretrain_synthetic_tower,
)

MODEL_KEYS = ["model.preset=tiny", "model.vision.image_size=56", "model.vision.num_hidden_layers=2",
              "model.vision.hidden_size=32", "model.vision.intermediate_size=64", "model.global_layer=2",
              "model.detail_layers=[1,2]", "model.window_scales=[1.0]"]


def test_patch_labels_mark_every_patch_a_box_overlaps():
    objects = [
        {"kind": "ship", "colour": "red", "bbox": [10, 10, 16, 14]},      # inside patch (1, 1)
        {"kind": "vehicle", "colour": "blue", "bbox": [6, 0, 10, 4]},     # straddles patches (0, 0) and (0, 1)
        {"kind": "plane", "colour": "white", "bbox": [40, 40, 47, 47]},   # outside the crop
    ]
    labels = patch_labels(objects, x0=0, y0=0, side=32, grid=4)
    assert labels.shape == (4, 4, len(LABELS))
    marked = {(int(r), int(c), LABELS[k]) for r, c, k in zip(*np.nonzero(labels))}
    assert marked == {(1, 1, "ship"), (1, 1, "red"), (0, 0, "vehicle"), (0, 0, "blue"), (0, 1, "vehicle"),
                      (0, 1, "blue")}
    shifted = patch_labels(objects, x0=16, y0=16, side=32, grid=4)  # the crop moved by two patches
    assert shifted[3, 3, LABELS.index("plane")] == 1 and shifted[..., LABELS.index("plane")].sum() == 1
    assert shifted[..., LABELS.index("ship")].sum() == 0 and shifted[..., LABELS.index("vehicle")].sum() == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tower_data") / "synthetic"
    generate(folder, n_images=12, seed=5, size=112, workers=1)
    return folder


def test_pretraining_writes_a_tower_the_recipe_loads(data, tmp_path, monkeypatch):
    from rsfuse.encoders.clip import CLIPVisionTower
    from rsfuse.synthetic import tower_pretrain

    initial: list[dict[str, torch.Tensor]] = []

    class RecordingTower(CLIPVisionTower):  # keeps a copy of the weights the pretraining starts from
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            initial.append({key: value.detach().clone() for key, value in self.state_dict().items()})

    monkeypatch.setattr(tower_pretrain, "CLIPVisionTower", RecordingTower)
    model_config = build_model_config(load_config(None, MODEL_KEYS), None)
    settings = TowerPretrainSettings(layers=(1, 2), steps=12, batch_size=4, crop_sides=(112, 56, 28))
    lines: list[str] = []
    report = pretrain_synthetic_tower(data, tmp_path / "tower", config=model_config.vision, settings=settings,
                                      val_crops=8, log=lines.append)
    assert np.isfinite(report["final_loss"])
    # The loss logged every step is the running mean since step 1: it must fall well below the first step's loss
    # (with frozen weights it stays near it, about 0.75 here; trained it ends near 0.5).
    running = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("[tower] step")]
    assert len(running) == 12 and report["final_loss"] == pytest.approx(running[-1], abs=1e-4)
    assert running[-1] < 0.8 * running[0], running
    # Every weight of the saved tower the hidden states use moved away from its initialisation (post_layernorm only
    # acts on the pooled output, which the pretraining never reads).
    assert len(initial) == 1
    _, trained = read_clip_vision(tmp_path / "tower")
    assert sorted(trained) == sorted(initial[0])
    unchanged = [key for key, value in initial[0].items() if torch.equal(value, trained[key])]
    assert unchanged == ["post_layernorm.weight", "post_layernorm.bias"], unchanged
    assert set(report["validation_patch_f1"]) == {"crop112", "crop112_upsampled", "crop56", "crop56_upsampled",
                                                  "crop28", "crop28_upsampled"}
    assert json.loads((tmp_path / "tower" / "pretrain.json").read_text())["settings"]["steps"] == 12
    stored_config, state_dict = read_clip_vision(tmp_path / "tower")
    assert stored_config.to_dict() == model_config.vision.to_dict()

    from rsfuse.model import MFRSVLM

    model = MFRSVLM(model_config)
    load_tower_weights(model, str(tmp_path / "tower"))
    for key, value in model.vision_tower.state_dict().items():
        assert torch.equal(value, state_dict[key]), key

    other = MFRSVLM(build_model_config(load_config(None, [*MODEL_KEYS, "model.vision.hidden_size=64"]), None))
    with pytest.raises(ConfigError, match=r"model\.vision_weights=.*hidden_size.*\(64, 32\)"):
        load_tower_weights(other, str(tmp_path / "tower"))


def test_images_are_kept_as_uint8_and_give_the_float_crops_exactly(data):
    images = _Images(data, "train")
    assert images.stored.dtype == torch.uint8 and images.stored.shape[1:] == (3, 112, 112)
    scenes = [scene for scene in json.loads((data / "scenes.json").read_text()) if scene["split"] == "train"]
    pixels = torch.stack([ImageProcessor(112)(data / scene["image"]) for scene in scenes])  # the whole split, float
    twins = resize_to(torch.nn.functional.interpolate(pixels, size=(56, 56), mode="bilinear", antialias=True,
                                                      align_corners=False), 112)
    for index in (0, len(scenes) - 1):
        assert torch.equal(images.crop_source(index, upsampled=False), pixels[index : index + 1])
        assert torch.equal(images.crop_source(index, upsampled=True), twins[index : index + 1])


def test_bad_settings_are_named(data, tmp_path):
    model_config = build_model_config(load_config(None, MODEL_KEYS), None)
    with pytest.raises(ValueError, match="crop_sides"):
        pretrain_synthetic_tower(data, tmp_path / "t", config=model_config.vision,
                                 settings=TowerPretrainSettings(layers=(1,), steps=1, crop_sides=(224,)))
    with pytest.raises(ValueError, match="layers"):
        TowerPretrainSettings(layers=())
    with pytest.raises(ValueError, match="only 2 blocks"):
        pretrain_synthetic_tower(data, tmp_path / "t", config=model_config.vision,
                                 settings=TowerPretrainSettings(layers=(3,), steps=1, crop_sides=(56,)))
