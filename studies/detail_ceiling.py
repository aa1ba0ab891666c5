"""How much object information can any decoder read from the global tokens, and how much do the detail stacks add?

An upper-bound check for the synthetic ablation study (``python -m studies.ablate_synthetic``): for the study's frozen tower
and canvas settings, it encodes the benchmark's training images exactly as the model does (``MFRSVLM.vision_features``:
global features ``[N, C]`` and detail stacks ``[K, N, C]``, before the projector), then trains the same small
attention-pooling probe on six inputs — global tokens; global tokens with their detail stacks; the stacks alone;
the stacks as a canvas (each canvas position a token, scales and layers as its features); global tokens with the
stacks' phases averaged (what a router weighting the phases alike hands the injector); global tokens with every
stack averaged (what the per-sample router hands it when it weights all stacks alike) — to
read, per object kind, whether it is present, how many there are (0..5, "5" = five or more) and, where the kind has
exactly one instance (as the colour and position questions ask), its colour and quadrant; it reports held-out
accuracies. Weighted by the small-object question mix of the test split, each probe's accuracies give the score its
reader would reach on those questions; the best detail input per head and kind minus the global tokens is an
indicative ceiling on what the detail branch can add (taking the maximum of several noisy figures leans it upwards).
The probes are small, so their figures are indicative, not strict bounds: a large gap between the global and the
detail inputs says the detail branch has something to add, a small one that it has little, whatever decoder reads it.

Example (the tower and data of the study in docs/ablations/ABLATIONS.md)::

    python studies/detail_ceiling.py --threads 1 --data runs/ablate_synthetic/data \
        --tower runs/ablate_synthetic/shared/tower --out bench/results/detail_ceiling_scale1.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from einops import rearrange, reduce
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MAX_COUNT = 5


INPUTS = ("global", "global+stacks", "stacks", "canvas", "global+phase-mean", "global+stack-mean")
HEADS = ("presence", "count", "colour", "position")  # probe heads; question types existence/count/colour/position
QUESTION_HEADS = {"existence": "presence", "count": "count", "colour": "colour", "position": "position"}


def head_classes() -> dict[str, int]:
    """Logits per kind of each head (presence is one binary logit)."""
    from rsfuse.synthetic.scene import COLOUR_NAMES, QUADRANTS  # noqa: PLC0415

    return {"presence": 1, "count": MAX_COUNT + 1, "colour": len(COLOUR_NAMES), "position": len(QUADRANTS)}


class PoolingProbe(nn.Module):
    """``[B, N, F]`` tokens → per head in HEADS, logits ``[B, kinds, classes]``: a token MLP plus a learned embedding
    of each token's index (a decoder knows where each visual token sits from its sequence position), ``queries``
    learned attention-pooling queries, one linear head."""

    def __init__(self, *, features: int, tokens: int, kinds: int, width: int = 128, queries: int = 8) -> None:
        super().__init__()
        self.kinds = kinds
        self.classes = head_classes()
        self.token_mlp = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, width), nn.GELU(),
                                       nn.Linear(width, width))
        self.position = nn.Parameter(torch.zeros(tokens, width))
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.head = nn.Linear(queries * width, kinds * sum(self.classes.values()))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.token_mlp(tokens) + self.position
        attention = torch.einsum("qw,bnw->bqn", self.queries, hidden).div(hidden.shape[-1] ** 0.5).softmax(-1)
        pooled = rearrange(torch.einsum("bqn,bnw->bqw", attention, hidden), "b q w -> b (q w)")
        logits = rearrange(self.head(pooled), "b (k c) -> b k c", k=self.kinds)
        return dict(zip(self.classes, logits.split(list(self.classes.values()), dim=-1), strict=True))


def object_targets(scenes: list[dict], kinds: list[str]) -> dict[str, torch.Tensor]:
    """Per head, targets ``[images, kinds]``: presence (0/1 float), clipped count, and — where the kind has exactly
    one instance, as the colour and position questions ask — its colour and quadrant index (-1 elsewhere)."""
    from rsfuse.synthetic.scene import COLOUR_NAMES, QUADRANTS, Scene  # noqa: PLC0415

    counts, colours, quadrants = [], [], []
    for index, data in enumerate(scenes):
        scene = Scene.from_dict(data, where=f"scenes[{index}]")
        counts.append([scene.count(kind) for kind in kinds])
        singles = [scene.objects_of(kind)[0] if scene.count(kind) == 1 else None for kind in kinds]
        colours.append([COLOUR_NAMES.index(obj.colour) if obj else -1 for obj in singles])
        quadrants.append([QUADRANTS.index(obj.quadrant(scene.size)) if obj else -1 for obj in singles])
    counts = torch.tensor(counts)
    return {"presence": (counts > 0).float(), "count": counts.clamp(max=MAX_COUNT),
            "colour": torch.tensor(colours), "position": torch.tensor(quadrants)}


def probe_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Presence BCE plus the cross-entropies of the other heads (colour/position only where a target is set)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits["presence"].squeeze(-1), targets["presence"])
    for head in HEADS[1:]:
        wanted = targets[head] >= 0
        if wanted.any():
            loss = loss + nn.functional.cross_entropy(logits[head][wanted], targets[head][wanted])
    return loss


def train_probe(inputs: torch.Tensor, targets: dict[str, torch.Tensor], *, train: int, epochs: int,
                seed: int) -> dict:
    """Fit a ``PoolingProbe`` on the first ``train`` images, score the rest: accuracy per head and kind (colour and
    position over the held-out images where the kind has one instance; None where there is none)."""
    torch.manual_seed(seed)
    probe = PoolingProbe(features=inputs.shape[-1], tokens=inputs.shape[1], kinds=targets["presence"].shape[1])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(train).split(64):
            loss = probe_loss(probe(inputs[batch]), {head: target[batch] for head, target in targets.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = probe(inputs[train:])
    held_out = {head: target[train:] for head, target in targets.items()}
    predicted = {"presence": (logits["presence"].squeeze(-1) > 0).float()}
    predicted |= {head: logits[head].argmax(-1) for head in HEADS[1:]}
    scores = {}
    for head in HEADS:
        wanted = held_out[head] >= 0
        correct = (predicted[head] == held_out[head]) & wanted
        per_kind = [round(c / n, 4) if n else None
                    for c, n in zip(correct.sum(0).tolist(), wanted.sum(0).tolist(), strict=True)]
        scores[head] = per_kind
        scores[f"{head}_mean"] = round(correct.sum().item() / max(wanted.sum().item(), 1), 4)
    return scores


def question_mix(path: Path, limit: int) -> dict[str, dict[str, int]]:
    """Small-object questions per type and kind among the first ``limit`` records of a test JSON."""
    records = json.loads(path.read_text())[:limit]
    mix: dict[str, dict[str, int]] = {}
    for record in records:
        if record.get("small_object") and record.get("question_type") in QUESTION_HEADS:
            kinds = mix.setdefault(record["question_type"], {})
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    return mix


def weighted_accuracy(scores: dict, mix: dict[str, dict[str, int]], kinds: list[str]) -> float:
    """A probe's accuracies weighted by a question mix: what its reader would score on those questions, in %."""
    total = correct = 0.0
    for question_type, per_kind in mix.items():
        accuracies = scores[QUESTION_HEADS[question_type]]
        for kind, questions in per_kind.items():
            accuracy = accuracies[kinds.index(kind)]
            if accuracy is not None:
                total += questions
                correct += questions * accuracy
    return round(100 * correct / max(total, 1), 2)


def encode_scenes(args, scenes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features ``[images, N, C]``, detail stacks ``[images, K, N, C]`` of the study's model and the number
    of phases per (scale, layer) (``K = scales · layers · phases``)."""
    import yaml  # noqa: PLC0415

    from rsfuse.data import ImageProcessor  # noqa: PLC0415
    from rsfuse.model import MFRSVLM, MFRSVLMConfig  # noqa: PLC0415
    from rsfuse.train.setup import load_tower_weights  # noqa: PLC0415

    extra = dict(item[len("model."):].split("=", 1) for item in args.extra if item.startswith("model."))
    config = MFRSVLMConfig.synthetic_study().with_overrides({key: yaml.safe_load(value) for key, value in extra.items()})
    model = MFRSVLM(config).eval()
    load_tower_weights(model, str(args.tower))
    processor = ImageProcessor(model.config.input_size)
    global_rows, stack_rows = [], []
    with torch.no_grad():
        for start in range(0, len(scenes), args.batch_size):
            pixels = torch.stack([processor(args.data / scene["image"])
                                  for scene in scenes[start : start + args.batch_size]])
            global_features, stacks = model.vision_features(pixels)
            if stacks is None:
                raise ValueError("studies/detail_ceiling.py: the model has no detail branch (model.detail=false?)")
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
    parser.add_argument("--questions", type=Path, help="test JSON whose small-object mix weights the accuracies "
                        "(default: DATA/test.json)")
    parser.add_argument("--limit", type=int, default=1500, help="first LIMIT records of --questions (the study's "
                        "--eval-limit)")
    parser.add_argument("--inputs", type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
                        help="comma list of probe inputs to fit (default: all)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.questions = args.questions or args.data / "test.json"
    unknown = sorted(set(args.inputs or ()) - set(INPUTS))
    if unknown:
        parser.error(f"--inputs: unknown {unknown}; known: {', '.join(INPUTS)}")
    scenes_path = args.data / "scenes.json"
    if not scenes_path.is_file():
        parser.error(f"{scenes_path}: missing (write the benchmark with `rsfuse synth`)")
    scenes = [scene for scene in json.loads(scenes_path.read_text()) if scene.get("split") == "train"][: args.images]
    if len(scenes) < 20:
        parser.error(f"{scenes_path}: only {len(scenes)} training scenes; the probe needs at least 20")
    from rsfuse.synthetic.scene import OBJECT_KINDS  # noqa: PLC0415

    kinds = list(OBJECT_KINDS)
    started = time.time()
    global_features, stacks, phases = encode_scenes(args, scenes)
    encode_s = time.time() - started
    targets = object_targets(scenes, kinds)
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
        # Every stack averaged: what the reference's per-sample router hands the injector when it weights the
        # stacks alike (one convex mix of scales, layers and phases per sample).
        "global+stack-mean": lambda: torch.cat([global_features, reduce(stacks, "b k n c -> b n c", "mean")], dim=-1),
    }
    inputs = {name: build for name, build in inputs.items() if not args.inputs or name in args.inputs}
    train = int(0.8 * len(scenes))
    mix = question_mix(args.questions, args.limit) if args.questions.is_file() else {}
    result = {"data": str(args.data), "tower": str(args.tower), "extra": args.extra, "images": len(scenes),
              "held_out": len(scenes) - train, "kinds": kinds, "epochs": args.epochs,
              "present_fraction": [round(value, 4) for value in targets["presence"][train:].mean(0).tolist()],
              "single_held_out": (targets["colour"][train:] >= 0).sum(0).tolist(),
              "question_mix": {"file": str(args.questions), "limit": args.limit, "questions": mix},
              "encode_s": round(encode_s, 1), "probes": {}}
    for name, build in inputs.items():
        scores = result["probes"][name] = train_probe(build(), targets, train=train, epochs=args.epochs,
                                                      seed=args.seed)
        if mix:
            scores["weighted_small_object"] = weighted_accuracy(scores, mix, kinds)
        print(f"{name:18s} " + " | ".join(f"{head} {scores[head + '_mean']:.3f}" for head in HEADS)
              + (f" | weighted small-object {scores['weighted_small_object']:.1f}%" if mix else ""), flush=True)
    if mix and "global" in inputs and len(inputs) > 1:
        # The best detail input per (head, kind): what the detail branch could add if its reader were that good.
        detail = [scores for name, scores in result["probes"].items() if name != "global"]
        best = {head: [max((s[head][k] for s in detail if s[head][k] is not None), default=None)
                       for k in range(len(kinds))] for head in HEADS}
        result["best_detail_weighted_small_object"] = weighted_accuracy(best, mix, kinds)
        result["ceiling_gain_points"] = round(result["best_detail_weighted_small_object"]
                                              - result["probes"]["global"]["weighted_small_object"], 2)
        print(f"best detail input per head and kind: {result['best_detail_weighted_small_object']:.1f}% "
              f"(+{result['ceiling_gain_points']:.1f} points over the global tokens)", flush=True)
    result["wall_s"] = round(time.time() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
