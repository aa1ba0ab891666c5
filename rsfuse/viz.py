"""Pictures of what MF-RSVLM does (``rsfuse viz``), drawn with matplotlib.

``rsfuse viz --model DIR --image FILE --question TEXT [--out PNG]``: one figure with the image the model sees (padded
to a square) and its answer; per injection layer, the mean gate value of every visual token as a heat map over the
image; and per injection layer, the router's weights over the K detail stacks as bars labelled by window scale,
tower layer and phase (in the model's stack order: scale → layer → phase). They come from the prefill pass
(``MFRSVLM.forward(..., output_injection_stats=True)``: gate mean ``[B, N]``, router weights ``[B, K]``, or
``[B, N, K]`` for the per-token router, shown averaged over tokens).

``rsfuse viz loss RUN_DIR [--out PNG]``: the training loss curve (raw, smoothed, validation) and the learning rate
from ``RUN_DIR/metrics.jsonl``.

Figures are built by `injection_figure` / `loss_figure` (returning the matplotlib figure, axes labelled
``image``, ``gate:<layer>``, ``router:<layer>``, ``loss``, ``lr``) and saved by `main`.
"""

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange, reduce

from rsfuse.fusion import DetailStackSampler
from rsfuse.options import DEFAULT_TEMPLATE

__all__ = [
    "InjectionRecord",
    "stack_labels",
    "record_injection",
    "injection_figure",
    "loss_figure",
    "main",
]


@dataclass
class InjectionRecord:
    """What one injector saw on the prefill pass for one sample.

    ``layer``: 0-based decoder layer index; ``router_weights [K]`` (averaged over tokens for a per-token router);
    ``gate_mean [N]``: the gate averaged over channels for each visual token (row-major token grid).
    """

    layer: int
    router_weights: torch.Tensor
    gate_mean: torch.Tensor
    per_token_router: bool


def stack_labels(config) -> list[str]:
    """One label per detail stack, in the model's stack order: scale → tower layer → phase (r-major)."""
    order = DetailStackSampler(config.stack_factor).stack_order(config.window_scales, config.detail_layers)
    return [f"{scale:g}× L{layer} ({row},{col})" for scale, layer, row, col in order]


@torch.no_grad()
def record_injection(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, *, max_new_tokens: int = 16,
                     eos_token_id: int | None = None, **inputs) -> tuple[list[InjectionRecord], torch.Tensor]:
    """Run greedy generation for one sample and read the injectors' statistics of its prefill; returns (one record
    per injector, new token ids). ``inputs``: the processor's other outputs (``visual_positions``)."""
    if not model.config.detail or len(model.injectors) == 0:
        raise ValueError("rsfuse viz: this model has no detail injectors (config.detail is false): "
                         "there are no router weights or gates to show")
    if pixel_values.shape[0] != 1:
        raise ValueError(f"rsfuse viz: one image at a time, got a batch of {pixel_values.shape[0]}")
    new_tokens = model.generate(pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_token_id, **inputs)
    # The injection happens at prefill; the forward over the prompt is that prefill, with its statistics returned.
    stats = model(pixel_values, input_ids, attention_mask, output_injection_stats=True, **inputs).injection_stats or {}
    records = []
    for layer in sorted(int(index) for index in model.injectors.keys()):
        if layer not in stats or stats[layer].router_weights is None:
            raise RuntimeError(f"rsfuse viz: the injector before decoder layer {layer} reported nothing on prefill")
        weights = stats[layer].router_weights[0].float().cpu()
        per_token = weights.ndim == 2
        if per_token:
            weights = reduce(weights, "n k -> k", "mean")
        records.append(InjectionRecord(layer, weights, stats[layer].gate_mean[0].float().cpu(), per_token))
    return records, new_tokens[0]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _token_grid(gate_mean: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(gate_mean.numel())
    if side * side != gate_mean.numel():
        raise ValueError(f"rsfuse viz: {gate_mean.numel()} visual tokens do not form a square grid")
    return rearrange(gate_mean, "(h w) -> h w", h=side)


def _where(layer: int) -> str:
    return f"before decoder layer {layer + 1} (1-based; index {layer})"


def injection_figure(image, records: Sequence[InjectionRecord], labels: Sequence[str], *, question: str = "",
                     answer: str = ""):
    """The figure: image + one gate heat map per injection layer (top row), one router bar chart per layer below.

    ``image`` is a PIL image (shown as the model sees it, square); ``labels`` come from `stack_labels`.
    """
    plt = _pyplot()
    from matplotlib.gridspec import GridSpec

    if not records:
        raise ValueError("injection_figure: no injection records")
    num_layers = len(records)
    num_stacks = len(labels)
    if any(record.router_weights.numel() != num_stacks for record in records):
        raise ValueError(f"injection_figure: router weights do not have {num_stacks} entries (one per stack label)")
    columns = num_layers + 1
    figure = plt.figure(figsize=(max(3.2 * columns, 0.32 * num_stacks + 2), 3.6 + 2.4 * num_layers),
                        layout="constrained")
    grid = GridSpec(1 + num_layers, columns, figure=figure, height_ratios=[1.5] + [1.0] * num_layers)
    width, height = image.size

    image_axis = figure.add_subplot(grid[0, 0], label="image")
    image_axis.imshow(image)
    image_axis.set_title("input (as the model sees it)", fontsize=9)
    parts = ([f"Q: {question}"] if question else []) + ([f"A: {answer}"] if answer else [])
    caption = "\n".join(parts)
    image_axis.set_xlabel(caption[:160], fontsize=8, wrap=True)
    image_axis.set_xticks([])
    image_axis.set_yticks([])

    # One colour scale for every heat map, so layers can be compared.
    gate_low = min(float(record.gate_mean.min()) for record in records)
    gate_high = max(float(record.gate_mean.max()) for record in records)
    heat = None
    for column, record in enumerate(records, start=1):
        axis = figure.add_subplot(grid[0, column], label=f"gate:{record.layer}")
        axis.imshow(image)
        heat = axis.imshow(_token_grid(record.gate_mean).numpy(), cmap="inferno", alpha=0.6, vmin=gate_low,
                           vmax=gate_high, extent=(0, width, height, 0), interpolation="nearest")
        axis.set_title(f"mean gate per visual token\n{_where(record.layer)}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(heat, ax=[figure.axes[-1]], fraction=0.046, pad=0.02, label="gate")

    palette = plt.get_cmap("tab10")
    colour_of = {}
    for label in labels:
        key = label.rsplit(" (", 1)[0]  # scale and layer
        colour_of.setdefault(key, palette(len(colour_of) % 10))
    colours = [colour_of[label.rsplit(" (", 1)[0]] for label in labels]
    for row, record in enumerate(records, start=1):
        axis = figure.add_subplot(grid[row, :], label=f"router:{record.layer}")
        positions = range(num_stacks)
        axis.bar(positions, record.router_weights.numpy(), color=colours)
        axis.axhline(1.0 / num_stacks, color="grey", linewidth=0.8, linestyle="--", label="uniform")
        axis.set_xticks(list(positions))
        axis.set_xticklabels(labels, rotation=70, fontsize=7)
        how = "mean over tokens, per-token router" if record.per_token_router else "per sample"
        axis.set_title(f"router weights over the {num_stacks} detail stacks {_where(record.layer)} "
                       f"({how}); labels: window scale × tower layer (phase row, col)", fontsize=9)
        axis.set_ylabel("weight")
        axis.set_xlim(-0.6, num_stacks - 0.4)
        axis.legend(loc="upper right", fontsize=7)
    return figure


def _smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    out, running = [], None
    for value in values:
        running = value if running is None else weight * running + (1 - weight) * value
        out.append(running)
    return out


def loss_figure(records: Sequence[dict], *, title: str = ""):
    """Training loss (raw and exponentially smoothed), validation loss when logged, and the learning rate."""
    plt = _pyplot()
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    if not train:
        raise ValueError("loss_figure: no records with a numeric 'loss'")
    val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    rates = [(r["step"], r["lr"]) for r in records if isinstance(r.get("lr"), (int, float))]
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                                gridspec_kw={"height_ratios": [3, 1]})
    loss_axis.set_label("loss")
    lr_axis.set_label("lr")
    steps, losses = zip(*train)
    loss_axis.plot(steps, losses, linewidth=0.8, alpha=0.4, label="train loss")
    loss_axis.plot(steps, _smoothed(list(losses)), linewidth=1.6, label="train loss (smoothed, EMA 0.9)")
    if val:
        loss_axis.plot(*zip(*val), "o-", label="validation loss")
    loss_axis.set_ylabel("loss")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend()
    loss_axis.set_title(title or "training loss", fontsize=10)
    if rates:
        lr_axis.plot(*zip(*rates), color="tab:green", linewidth=1)
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("optimizer step")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------------- command line


def _injection_main(args) -> Path:
    from rsfuse.data import load_image
    from rsfuse.model import MFRSVLM
    from rsfuse.processor import MFRSVLMProcessor

    model = MFRSVLM.from_pretrained(args.model).eval()
    if args.tokenizer:  # a tokenizer folder alone: the image settings come from the model
        processor = MFRSVLMProcessor.from_model(model, args.tokenizer, template=args.template)
    else:
        processor = MFRSVLMProcessor.from_pretrained(args.model, template=args.template)
    image = load_image(args.image)
    inputs = processor(images=[image], text=[args.question])
    records, new_tokens = record_injection(model, **inputs, max_new_tokens=args.max_new_tokens,
                                           eos_token_id=processor.tokenizer.eos_id)
    answer = processor.decode(new_tokens)
    figure = injection_figure(processor.image_processor.pad_to_square(image), records, stack_labels(model.config),
                              question=args.question, answer=answer)
    out = Path(args.out or Path(args.image).with_suffix(".viz.png").name)
    return _save(figure, out)


def _loss_main(args) -> Path:
    from rsfuse.train.metrics import read_metrics

    run_dir = Path(args.run_dir)
    metrics = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not metrics.is_file():
        raise FileNotFoundError(f"rsfuse viz loss: {metrics} not found (expected a run folder with metrics.jsonl)")
    records = read_metrics(metrics)
    if not any(isinstance(r.get("loss"), (int, float)) for r in records):
        raise ValueError(f"rsfuse viz loss: {metrics} holds no record with a numeric 'loss'")
    figure = loss_figure(records, title=f"training loss: {metrics.parent}")
    out = Path(args.out) if args.out else metrics.parent / "loss_curve.png"
    return _save(figure, out)


def _save(figure, out: Path) -> Path:
    plt = _pyplot()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "loss":
        parser = argparse.ArgumentParser(prog="rsfuse viz loss", description="draw the loss curve of a training run")
        parser.add_argument("run_dir", help="training output_dir (or its metrics.jsonl)")
        parser.add_argument("--out", default="", help="PNG to write (default RUN_DIR/loss_curve.png)")
        args = parser.parse_args(argv[1:])
        handler = _loss_main
    else:
        parser = argparse.ArgumentParser(
            prog="rsfuse viz", description="router weights and gate heat map for one image and question "
            "(or: rsfuse viz loss RUN_DIR)")
        parser.add_argument("--model", required=True, help="model folder (MFRSVLM.from_pretrained)")
        parser.add_argument("--image", required=True, help="image file")
        parser.add_argument("--question", required=True, help="question about the image")
        parser.add_argument("--out", default="", help="PNG to write (default <image name>.viz.png here)")
        parser.add_argument("--tokenizer", default="", help="tokenizer folder (default: the model folder)")
        parser.add_argument("--template", default=None,
                            help=f"conversation template (default: the folder's, else {DEFAULT_TEMPLATE})")
        parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length budget")
        args = parser.parse_args(argv)
        handler = _injection_main
    try:
        out = handler(args)
    except (FileNotFoundError, ValueError) as error:
        from rsfuse.recipes.errors import debug_requested, report_expected  # noqa: PLC0415  (CLI error path)

        return report_expected("rsfuse viz", error, debug=debug_requested())
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
