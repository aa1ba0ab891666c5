"""Pretrain a small CLIP-layout vision tower on the synthetic benchmark: the ablation study's stand-in for CLIP.

MF-RSVLM freezes a pretrained CLIP; no pretrained weights of a CPU-sized tower exist, and a frozen *random* tower
leaves small objects invisible to every variant alike. This trains one tower, once, with dense object supervision:
for random square crops of a training image (sides ``crop_sides``: the whole image as the global view sees it, and
window-sized crops as the canvas sees them; a fraction ``upsampled_fraction`` taken from the 2×-downsampled and
re-upsampled image, as an ``upsampled`` canvas sees it), resized to the tower's input size, every patch token of each
requested hidden state predicts, through its own linear head, which object kinds and colours overlap that patch
(binary cross-entropy over ``len(OBJECT_KINDS) + len(COLOUR_NAMES)`` labels, positives weighted by
``positive_weight``). The tower is saved as an HF vision-only CLIP folder (``save_clip_vision``) for
``model.vision_weights`` and frozen by every variant alike.

Held-out validation images give per-crop-side patch-label F1 in ``pretrain.json``: how well small objects can be seen
at each apparent size, i.e. how much the global view loses.
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rsfuse.checkpoints.clip import save_clip_vision
from rsfuse.data.preprocess import ImageProcessor
from rsfuse.synthetic.scene import COLOUR_NAMES, OBJECT_KINDS
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.encoders.windows import resize_to

__all__ = ["TowerPretrainSettings", "patch_labels", "pretrain_synthetic_tower"]

LABELS: tuple[str, ...] = tuple(OBJECT_KINDS) + tuple(COLOUR_NAMES)


@dataclass(frozen=True)
class TowerPretrainSettings:
    """What ``pretrain_synthetic_tower`` trains and how; saved with the tower in ``pretrain.json``."""

    layers: tuple[int, ...]
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    crop_sides: tuple[int, ...] = (224, 112, 56)
    upsampled_fraction: float = 0.25
    positive_weight: float = 10.0
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.layers or any(int(layer) < 1 for layer in self.layers):
            raise ValueError(f"TowerPretrainSettings.layers: need hidden-state indices >= 1, got {self.layers!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"TowerPretrainSettings: steps, batch_size and lr must be positive, got "
                             f"{self.steps}, {self.batch_size}, {self.lr}")
        if not 0.0 <= self.upsampled_fraction <= 1.0:
            raise ValueError(f"TowerPretrainSettings.upsampled_fraction must be in [0, 1], got {self.upsampled_fraction}")


def patch_labels(objects: list[dict], *, x0: int, y0: int, side: int, grid: int) -> np.ndarray:
    """``[grid, grid, len(LABELS)]`` multi-hot: kinds and colours of the objects whose bbox overlaps each patch of the
    crop ``[x0, x0 + side) × [y0, y0 + side)`` divided into ``grid × grid`` patches (bbox ``x0, y0, x1, y1`` in image
    pixels, ``x1, y1`` exclusive)."""
    labels = np.zeros((grid, grid, len(LABELS)), dtype=np.float32)
    scale = grid / side
    for obj in objects:
        left, top, right, bottom = obj["bbox"]
        first_column, last_column = math.floor((left - x0) * scale), math.ceil((right - x0) * scale) - 1
        first_row, last_row = math.floor((top - y0) * scale), math.ceil((bottom - y0) * scale) - 1
        first_column, first_row = max(first_column, 0), max(first_row, 0)
        last_column, last_row = min(last_column, grid - 1), min(last_row, grid - 1)
        if first_column > last_column or first_row > last_row:
            continue
        cells = labels[first_row : last_row + 1, first_column : last_column + 1]
        cells[..., LABELS.index(obj["kind"])] = 1.0
        cells[..., len(OBJECT_KINDS) + COLOUR_NAMES.index(obj["colour"])] = 1.0
    return labels


class _Images:
    """A split of the synthetic benchmark held in memory as ``uint8 [N, 3, S, S]`` (a quarter of float32: 19200 images
    of 224 px take 2.9 GB) with its object lists; ``crop_source(i, upsampled)`` gives image ``i`` normalised
    ``[1, 3, S, S]``, or its upsampled twin (2× down then up, as an ``upsampled`` canvas sees it)."""

    def __init__(self, root: Path, split: str) -> None:
        scenes_path = root / "scenes.json"
        if not scenes_path.is_file():
            raise FileNotFoundError(f"{scenes_path}: missing (write the benchmark with `rsfuse synth`)")
        scenes = [scene for scene in json.loads(scenes_path.read_text()) if scene.get("split") == split]
        if not scenes:
            raise ValueError(f"{scenes_path}: no scenes with split {split!r}")
        self.size = int(scenes[0]["size"])
        self.processor = ImageProcessor(self.size)
        self.stored = torch.stack([self.processor.resized(root / scene["image"]) for scene in scenes])
        self.objects = [scene["objects"] for scene in scenes]

    def crop_source(self, index: int, upsampled: bool) -> torch.Tensor:
        pixels = self.processor.normalize(self.stored[index : index + 1])
        if not upsampled:
            return pixels
        half = F.interpolate(pixels, size=(self.size // 2, self.size // 2), mode="bilinear", antialias=True,
                             align_corners=False)
        return resize_to(half, self.size)


def _crops(images: _Images, rng: np.random.Generator, count: int, settings: TowerPretrainSettings, input_size: int,
           grid: int, *, side: int | None = None, upsampled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random crops resized to ``input_size`` and their ``[count, grid·grid, labels]`` targets."""
    pixels, targets = [], []
    for _ in range(count):
        index = int(rng.integers(len(images.objects)))
        crop_side = side if side is not None else int(rng.choice(settings.crop_sides))
        from_upsampled = upsampled if upsampled is not None else bool(rng.random() < settings.upsampled_fraction)
        x0 = int(rng.integers(images.size - crop_side + 1))
        y0 = int(rng.integers(images.size - crop_side + 1))
        crop = images.crop_source(index, from_upsampled)[..., y0 : y0 + crop_side, x0 : x0 + crop_side]
        if crop_side > input_size:
            crop = F.interpolate(crop, size=(input_size, input_size), mode="bilinear", antialias=True,
                                 align_corners=False)
        else:
            crop = resize_to(crop, input_size)
        pixels.append(crop)
        labels = patch_labels(images.objects[index], x0=x0, y0=y0, side=crop_side, grid=grid)
        targets.append(torch.from_numpy(rearrange(labels, "h w k -> (h w) k")))
    return torch.cat(pixels), torch.stack(targets)


def _f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    predicted = logits > 0
    true_positive = (predicted & (targets > 0)).sum().item()
    denominator = predicted.sum().item() + (targets > 0).sum().item()
    return 2 * true_positive / denominator if denominator else 1.0


def pretrain_synthetic_tower(
    data_root: str | Path,
    output: str | Path,
    *,
    config: CLIPVisionConfig,
    settings: TowerPretrainSettings,
    val_crops: int = 512,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Train a tower of ``config`` on ``data_root`` (a synthetic benchmark folder: ``scenes.json`` + images) as the
    module docstring says and save it to ``output`` (HF CLIP vision folder + ``pretrain.json``). Returns the report."""
    data_root, output = Path(data_root), Path(output)
    if max(settings.layers) > config.num_hidden_layers:
        raise ValueError(f"TowerPretrainSettings.layers {settings.layers}: the tower has only "
                         f"{config.num_hidden_layers} blocks")
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    started = time.time()
    train, val = _Images(data_root, "train"), _Images(data_root, "val")
    if max(settings.crop_sides) > train.size or min(settings.crop_sides) < 1:
        raise ValueError(f"TowerPretrainSettings.crop_sides {settings.crop_sides}: each side must be in "
                         f"[1, {train.size}] (the images of {data_root} are {train.size} px)")
    input_size = config.image_size
    grid = input_size // config.patch_size
    tower = CLIPVisionTower(config).to(device)
    heads = nn.ModuleList(nn.Linear(config.hidden_size, len(LABELS)) for _ in settings.layers).to(device)
    parameters = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)

    positive_weight = torch.tensor(settings.positive_weight, device=device)

    def loss_and_logits(pixels, targets):
        pixels, targets = pixels.to(device), targets.to(device)
        states = tower.forward_intermediates(pixels, list(settings.layers))
        logits = [head(state) for head, state in zip(heads, states)]
        loss = sum(F.binary_cross_entropy_with_logits(value, targets, pos_weight=positive_weight)
                   for value in logits) / len(logits)
        return loss, logits

    losses = []
    tower.train()
    for step in range(settings.steps):
        pixels, targets = _crops(train, rng, settings.batch_size, settings, input_size, grid)
        loss, _ = loss_and_logits(pixels, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"[tower] step {step + 1}/{settings.steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")

    tower.eval()
    val_rng = np.random.default_rng(settings.seed + 1)
    validation = {}
    with torch.no_grad():
        for side in settings.crop_sides:
            for upsampled in (False, True):
                pixels, targets = _crops(val, val_rng, val_crops, settings, input_size, grid, side=side,
                                         upsampled=upsampled)
                _, logits = loss_and_logits(pixels, targets)
                targets = targets.to(device)
                key = f"crop{side}{'_upsampled' if upsampled else ''}"
                validation[key] = {
                    f"layer{layer}": {"kind_f1": round(_f1(value[..., : len(OBJECT_KINDS)],
                                                           targets[..., : len(OBJECT_KINDS)]), 4),
                                      "colour_f1": round(_f1(value[..., len(OBJECT_KINDS) :],
                                                             targets[..., len(OBJECT_KINDS) :]), 4)}
                    for layer, value in zip(settings.layers, logits)
                }
    save_clip_vision(output, config, tower.state_dict())
    report = {
        "what": "CLIP-layout tower pretrained on the synthetic benchmark's training images with per-patch object "
                "kind/colour labels (rsfuse.synthetic.tower_pretrain)",
        "data": str(data_root),
        "settings": asdict(settings),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5),
        "validation_patch_f1": validation,
        "device": str(device),
        "wall_s": round(time.time() - started, 1),
    }
    (output / "pretrain.json").write_text(json.dumps(report, indent=2))
    return report
