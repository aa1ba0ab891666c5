"""Evaluate a trained MF-RSVLM with only some of its detail stacks: a test-time probe of what the model uses.

A diagnostic for the synthetic ablation study (``python -m studies.ablate_synthetic``). The routers mix the ``K``
detail stacks with a softmax over the stacks they are given (``Router``), so handing the injectors a subset of the
stacks (``--layers``, ``--scales``: those tower layers / window scales only) gives each router's weights renormalised
over that subset, with every other weight of the model unchanged. If the full model's accuracy survives keeping only
the tower's last layer, its earlier layers carry nothing it uses; if it falls, it reads them. Nothing else changes:
the evaluation is ``rsfuse eval task=synthetic``'s (same reader, greedy, KV cache, batches, first ``--limit`` test
questions), so without ``--layers`` / ``--scales`` it reproduces the study's ``eval/metrics.json``.

Example (seed 0 of the directions study, last tower layer only)::

    python -m studies.stack_subset --model /work/ablate/runs/ablate_directions/runs/mf_rsvlm/seed0/final \\
        --data /work/ablate/runs/ablate_directions/data --layers 3 --limit 1500
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rsfuse.fusion import DetailStackSampler
from rsfuse.llm import Tokenizer
from rsfuse.model import MFRSVLM
from rsfuse.recipes.evaluate import evaluate, read_task
from studies._cli import benchmark_test_file, emit_json


class StackSubset(nn.Module):
    """The model's ``DetailStackSampler`` followed by a choice of stacks along ``K`` (``index``, in stack order)."""

    def __init__(self, sampler: DetailStackSampler, index: Sequence[int]) -> None:
        super().__init__()
        self.sampler = sampler
        self.register_buffer("index", torch.tensor(list(index), dtype=torch.long), persistent=False)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        stacks = self.sampler(canvas)
        return stacks.index_select(1, self.index.to(stacks.device))


def keep_stacks(model: MFRSVLM, *, layers: Sequence[int] | None = None,
                scales: Sequence[float] | None = None) -> list[tuple[float, int, int, int]]:
    """Hand the injectors of ``model`` only the stacks of these tower ``layers`` and window ``scales`` (None: all);
    returns the kept stacks as ``(scale, layer, row phase, column phase)``. A layer or scale the model does not fuse
    is a ValueError naming the ones it does."""
    config = model.config
    if not config.detail or model.canvas is None:
        raise ValueError("stack_subset: this model has no detail stacks (config.detail is false)")
    for name, asked, known in (("layer", layers, config.detail_layers), ("scale", scales, config.window_scales)):
        unknown = [value for value in (asked or []) if value not in known]
        if unknown:
            raise ValueError(f"stack_subset: tower {name} {unknown} is not fused by this model (its {name}s: "
                             f"{list(known)})")
    sampler = model.sampler.sampler if isinstance(model.sampler, StackSubset) else model.sampler
    order = sampler.stack_order(config.window_scales, config.detail_layers)
    index = [k for k, (scale, layer, _, _) in enumerate(order)
             if (layers is None or layer in layers) and (scales is None or scale in scales)]
    if not index:
        raise ValueError("stack_subset: no detail stack left (give at least one layer and one scale)")
    model.sampler = StackSubset(sampler, index)
    return [order[k] for k in index]


def _numbers(text: str, kind: type) -> list | None:
    return None if text is None else [kind(value) for value in text.split(",") if value.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained rsfuse model folder (with its tokenizer)")
    parser.add_argument("--data", required=True, help="the synthetic benchmark folder (test.json, images/)")
    parser.add_argument("--layers", help="comma-separated tower layers to keep (default: all the model fuses)")
    parser.add_argument("--scales", help="comma-separated window scales to keep (default: all)")
    parser.add_argument("--limit", type=int, default=1500, help="first N test questions (default 1500, the study's)")
    parser.add_argument("--batch-size", type=int, default=32, help="as the study's evaluation (32)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="as the study's evaluation (12)")
    parser.add_argument("--out", help="write the result as JSON here (default: print it)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    test = benchmark_test_file("stack_subset", data)
    if test is None:
        return 2
    try:
        layers, scales = _numbers(args.layers, int), _numbers(args.scales, float)
        records = read_task("synthetic", test, data)[: args.limit]
        model = MFRSVLM.from_pretrained(args.model).eval()
        model.requires_grad_(False)
        kept = keep_stacks(model, layers=layers, scales=scales)
        result = evaluate(model, Tokenizer.from_pretrained(args.model), "synthetic", records,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError) as error:
        print(f"stack_subset: {error}", file=sys.stderr)
        return 2
    summary = {
        "model": args.model, "questions": len(records), "layers": layers, "scales": scales,
        "kept_stacks": [f"scale {scale:g}, layer {layer}, phase ({row}, {col})" for scale, layer, row, col in kept],
        "small_object": result["by_object_size"]["small"]["exact_accuracy"],
        "overall": result["avg"]["exact_accuracy"],
        "per_type": {kind: row["exact_accuracy"] for kind, row in result["per_type"].items()},
    }
    emit_json(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
