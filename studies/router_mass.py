"""Where a trained MF-RSVLM's routers put their weight: per injection layer, the mean router weight that falls on each
tower layer and each window scale of the detail stacks, and the mean gate value, over test questions.

A diagnostic for the synthetic ablation study (``python -m studies.ablate_synthetic``): when fusing several tower
layers loses to the last layer alone (`layers_last` in ``docs/ablations/ABLATIONS_directions.md``), this says how much
of the routed detail comes from the earlier layers. The weights come from the prefill pass
(``MFRSVLM.forward(..., output_injection_stats=True)``), the stack order from ``DetailStackSampler.stack_order``
(scale → tower layer → phase); a per-token router's weights are averaged over tokens. Injection layers are named
1-based, as the study's variants are ("before decoder layer 2").

Example (seed 0 of the directions study)::

    python -m studies.router_mass --model /work/ablate/runs/ablate_directions/runs/mf_rsvlm/seed0/final \\
        --data /work/ablate/runs/ablate_directions/data --limit 300
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from einops import reduce

from rsfuse.fusion import DetailStackSampler
from rsfuse.model import MFRSVLM
from rsfuse.processor import MFRSVLMProcessor
from studies._cli import benchmark_test_file, emit_json


@torch.no_grad()
def router_mass(model: MFRSVLM, processor: MFRSVLMProcessor, records: list[dict], image_root: Path, *,
                batch_size: int = 16) -> dict:
    """Per injection layer (``"before decoder layer N"``, 1-based): mean router weight per tower layer and per
    window scale, and the mean gate value, over ``records`` (LLaVA conversations whose first human turn is the
    question)."""
    if not records:
        raise ValueError("router_mass: no test questions to run")
    if not model.config.detail or len(model.injectors) == 0:
        raise ValueError("router_mass: this model has no detail injectors (config.detail is false)")
    config = model.config
    order = DetailStackSampler(config.stack_factor).stack_order(config.window_scales, config.detail_layers)
    sums: dict[int, dict] = defaultdict(lambda: {"layer": defaultdict(float), "scale": defaultdict(float), "gate": 0.0})
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        questions = [record["conversations"][0]["value"].replace("<image>", "").strip() for record in batch]
        images = [str(image_root / record["image"]) for record in batch]
        inputs = processor(images=images, text=questions, padding_side="right")
        stats = model(**inputs, output_injection_stats=True).injection_stats or {}
        for layer_index, stat in stats.items():
            if stat.router_weights is None:
                raise ValueError(f"router_mass: the injector before decoder layer {layer_index + 1} has no router")
            weights = stat.router_weights.float()
            if weights.ndim == 3:  # per-token router: [B, N, K]
                weights = reduce(weights, "b n k -> b k", "mean")
            if weights.shape[-1] != len(order):
                raise ValueError(f"router_mass: {weights.shape[-1]} router weights, but the config names "
                                 f"{len(order)} detail stacks")
            per_stack = weights.sum(dim=0).tolist()
            for weight, (scale, tower_layer, _, _) in zip(per_stack, order):
                sums[layer_index]["layer"][tower_layer] += weight
                sums[layer_index]["scale"][scale] += weight
            sums[layer_index]["gate"] += float(stat.gate_mean.float().mean(dim=1).sum())
    count = len(records)
    return {
        f"before decoder layer {layer_index + 1}": {
            "router_weight_per_tower_layer": {str(k): round(v / count, 4) for k, v in sorted(s["layer"].items())},
            "router_weight_per_window_scale": {f"{k:g}": round(v / count, 4) for k, v in sorted(s["scale"].items())},
            "uniform_per_tower_layer": round(1 / len(config.detail_layers), 4),
            "gate_mean": round(s["gate"] / count, 4),
        }
        for layer_index, s in sorted(sums.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained rsfuse model folder (with its tokenizer)")
    parser.add_argument("--data", required=True, help="the synthetic benchmark folder (test.json, images/)")
    parser.add_argument("--limit", type=int, default=300, help="first N test questions (default 300)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="write the result as JSON here (default: print it)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    test = benchmark_test_file("router_mass", data)
    if test is None:
        return 2
    try:
        records = json.loads(test.read_text())[: args.limit]
        model = MFRSVLM.from_pretrained(args.model).eval()
        processor = MFRSVLMProcessor.from_pretrained(args.model)
        result = {"model": args.model, "questions": len(records),
                  "per_injection_layer": router_mass(model, processor, records, data, batch_size=args.batch_size)}
    except (OSError, ValueError) as error:
        print(f"router_mass: {error}", file=sys.stderr)
        return 2
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
