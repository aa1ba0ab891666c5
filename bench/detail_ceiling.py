"""How much object information can any decoder read from the global tokens, and how much do the detail stacks add?

An upper-bound check for the synthetic ablation study (``recipes/ablate_synthetic.py``): for the study's frozen tower
and canvas settings, it encodes the benchmark's training images exactly as the model does (``MFRSVLM.vision_features``:
global features ``[N, C]`` and detail stacks ``[K, N, C]``, before the projector), then trains the same small
attention-pooling probe on five inputs — global tokens; global tokens with their detail stacks; the stacks alone;
the stacks as a canvas (each canvas position a token, scales and layers as its features); global tokens with the
stacks' phases averaged (what a router weighting the phases alike hands the injector) — to
predict, per object kind, whether it is present and how many there are (0..5, "5" = five or more), and reports held-out
accuracies. The probes are small, so their figures are indicative, not strict bounds: a large gap between the global
and the detail inputs says the detail branch has something to add on existence and count, a small one that it has
little, whatever decoder reads it.

Example (the tower and data of the study in ABLATIONS.md)::

    python bench/detail_ceiling.py --data runs/ablate_synthetic/data --tower runs/ablate_synthetic/shared/tower \
        --out bench/results/detail_ceiling_scale1.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from einops import rearrange, reduce
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MAX_COUNT = 5


class PoolingProbe(nn.Module):
    """``[B, N, F]`` tokens → presence logits ``[B, kinds]`` and count logits ``[B, kinds, MAX_COUNT + 1]``: a token
    MLP, ``queries`` learned attention-pooling queries, one linear head."""

    def __init__(self, *, features: int, kinds: int, width: int = 128, queries: int = 8) -> None:
        super().__init__()
        self.kinds = kinds
        self.token_mlp = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, width), nn.GELU(),
                                       nn.Linear(width, width))
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.head = nn.Linear(queries * width, kinds * (MAX_COUNT + 2))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.token_mlp(tokens)
        attention = torch.einsum("qw,bnw->bqn", self.queries, hidden).div(hidden.shape[-1] ** 0.5).softmax(-1)
        pooled = rearrange(torch.einsum("bqn,bnw->bqw", attention, hidden), "b q w -> b (q w)")
        logits = rearrange(self.head(pooled), "b (k c) -> b k c", k=self.kinds)
        return logits[..., 0], logits[..., 1:]


def object_targets(scenes: list[dict], kinds: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Presence ``[images, kinds]`` (0/1 float) and clipped counts ``[images, kinds]`` (long) of each scene."""
    counts = torch.tensor([[sum(obj["kind"] == kind for obj in scene["objects"]) for kind in kinds]
                           for scene in scenes])
    return (counts > 0).float(), counts.clamp(max=MAX_COUNT)


def train_probe(inputs: torch.Tensor, presence: torch.Tensor, counts: torch.Tensor, *, train: int, epochs: int,
                seed: int) -> dict:
    """Fit a ``PoolingProbe`` on the first ``train`` images, score the rest (accuracy per kind and mean)."""
    torch.manual_seed(seed)
    probe = PoolingProbe(features=inputs.shape[-1], kinds=presence.shape[1])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(train).split(64):
            presence_logits, count_logits = probe(inputs[batch])
            loss = (nn.functional.binary_cross_entropy_with_logits(presence_logits, presence[batch])
                    + nn.functional.cross_entropy(rearrange(count_logits, "b k c -> (b k) c"),
                                                  rearrange(counts[batch], "b k -> (b k)")))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        presence_logits, count_logits = probe(inputs[train:])
    presence_accuracy = ((presence_logits > 0).float() == presence[train:]).float().mean(0)
    count_accuracy = (count_logits.argmax(-1) == counts[train:]).float().mean(0)
    return {"presence": [round(value, 4) for value in presence_accuracy.tolist()],
            "count": [round(value, 4) for value in count_accuracy.tolist()],
            "presence_mean": round(presence_accuracy.mean().item(), 4),
            "count_mean": round(count_accuracy.mean().item(), 4)}


def encode_scenes(args, scenes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features ``[images, N, C]``, detail stacks ``[images, K, N, C]`` of the study's model and the number
    of phases per (scale, layer) (``K = scales · layers · phases``)."""
    sys.path.insert(0, str(REPO / "recipes"))
    from ablate_synthetic import STUDY_OVERRIDES  # noqa: PLC0415

    from rsfuse.data.images import ImageProcessor  # noqa: PLC0415
    from rsfuse.model import MFRSVLM  # noqa: PLC0415
    from rsfuse.recipes.config import load_config  # noqa: PLC0415
    from rsfuse.recipes.train import build_model_config, load_tower_weights  # noqa: PLC0415

    model_keys = [item for item in (*STUDY_OVERRIDES, *args.extra) if item.startswith("model.")]
    model = MFRSVLM(build_model_config(load_config(None, model_keys), None)).eval()
    load_tower_weights(model, str(args.tower))
    processor = ImageProcessor(model.config.input_size)
    global_rows, stack_rows = [], []
    with torch.no_grad():
        for start in range(0, len(scenes), args.batch_size):
            pixels = torch.stack([processor(args.data / scene["image"])
                                  for scene in scenes[start : start + args.batch_size]])
            global_features, stacks = model.vision_features(pixels)
            if stacks is None:
                raise ValueError("bench/detail_ceiling.py: the model has no detail branch (model.detail=false?)")
            global_rows.append(global_features)
            stack_rows.append(stacks)
    return torch.cat(global_rows), torch.cat(stack_rows), model.sampler.factor**2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic benchmark folder (scenes.json + images)")
    parser.add_argument("--tower", type=Path, required=True, help="the study's frozen tower (HF CLIP vision folder)")
    parser.add_argument("--images", type=int, default=4800, help="training images to use (80%% fit, 20%% held out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64, help="images per tower batch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", action="append", default=[], help="model.* key=value on top of the study's")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes_path = args.data / "scenes.json"
    if not scenes_path.is_file():
        parser.error(f"{scenes_path}: missing (write the benchmark with `rsfuse synth`)")
    scenes = [scene for scene in json.loads(scenes_path.read_text()) if scene.get("split") == "train"][: args.images]
    if len(scenes) < 20:
        parser.error(f"{scenes_path}: only {len(scenes)} training scenes; the probe needs at least 20")
    from rsfuse.data.synthetic_scene import OBJECT_KINDS  # noqa: PLC0415

    kinds = list(OBJECT_KINDS)
    started = time.time()
    global_features, stacks, phases = encode_scenes(args, scenes)
    encode_s = time.time() - started
    presence, counts = object_targets(scenes, kinds)
    inputs = {  # built one at a time: the stacked inputs of 4800 images take about 2 GB each
        "global": lambda: global_features,
        "global+stacks": lambda: torch.cat([global_features, rearrange(stacks, "b k n c -> b n (k c)")], dim=-1),
        "stacks": lambda: rearrange(stacks, "b k n c -> b n (k c)"),
        # Every canvas position its own token (phases apart), the scales and layers side by side: the probe's
        # token MLP is shared over positions, as a detector would be.
        "canvas": lambda: rearrange(stacks, "b (sl p) n c -> b (p n) (sl c)", p=phases),
        # The phases of each token averaged, as a router weighting them alike would mix them.
        "global+phase-mean": lambda: torch.cat(
            [global_features, reduce(stacks, "b (sl p) n c -> b n (sl c)", "mean", p=phases)], dim=-1),
    }
    train = int(0.8 * len(scenes))
    result = {"data": str(args.data), "tower": str(args.tower), "extra": args.extra, "images": len(scenes),
              "held_out": len(scenes) - train, "kinds": kinds, "epochs": args.epochs,
              "present_fraction": [round(value, 4) for value in presence[train:].mean(0).tolist()],
              "encode_s": round(encode_s, 1), "probes": {}}
    for name, build in inputs.items():
        result["probes"][name] = train_probe(build(), presence, counts, train=train, epochs=args.epochs,
                                             seed=args.seed)
        scores = result["probes"][name]
        print(f"{name:14s} presence {scores['presence']} mean {scores['presence_mean']:.3f} | "
              f"count {scores['count']} mean {scores['count_mean']:.3f}", flush=True)
    result["wall_s"] = round(time.time() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
