"""Does a trained model's decoder look at the object a question asks about?

A diagnostic for the synthetic ablation study (``recipes/ablate_synthetic.py``). For test questions about one object
kind (colour, position, count), it runs the model's forward pass on the prompt and records, at every decoder layer,
the attention of the last prompt token (the one that predicts the answer's first token) over the global visual
tokens. Per question type and layer it reports the largest image share of any head (``image_mass``: how much the
answer position looks at the image at all) and ``object_lift``: the best head's share of its image attention that
falls on the global-token cells the asked objects overlap, divided by those cells' share of the grid (1.0 = no more
than uniform; a head that reads the object reaches tens). A decoder that answers colour or position questions must
find the object first, so a lift near 1 at every layer says it has not learnt to.

Example (seed 0 of the study in ABLATIONS_large.md)::

    python bench/attention_to_objects.py --model runs/ablate_large/runs/mf_rsvlm/seed0/final \
        --data runs/ablate_large/data --limit 300 --out bench/results/attention_large_mf_seed0.json
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from einops import reduce, repeat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsfuse.data import ImageProcessor, load_image  # noqa: E402
from rsfuse.llm.templates import build_prompt, tokenize_prompt  # noqa: E402
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer  # noqa: E402
from rsfuse.model import MFRSVLM  # noqa: E402

TYPES = ("colour", "position", "count")


@contextmanager
def causal_attention_weights(records: list[torch.Tensor]):
    """While active, every decoder attention call appends its causal softmax weights ``[heads, queries, keys]``
    (batch row 0, key padding ignored: read rows up to the last real token only) to ``records``, then attends as
    usual."""
    import rsfuse.llm.layers as layers  # noqa: PLC0415

    attend = layers.attention

    def recording(queries, keys, values, **options):
        heads, kv_heads = queries.shape[2], keys.shape[2]
        keys_per_head = repeat(keys[0], "n h d -> n (h g) d", g=heads // kv_heads)
        logits = torch.einsum("mhd,nhd->hmn", queries[0], keys_per_head).float() / math.sqrt(queries.shape[-1])
        future = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).triu(1)
        records.append(logits.masked_fill(future, float("-inf")).softmax(-1))
        return attend(queries, keys, values, **options)

    layers.attention = recording
    try:
        yield records
    finally:
        layers.attention = attend


def object_cells(objects: list[dict], size: int, grid: int) -> list[int]:
    """Row-major indices of the ``grid × grid`` cells that the pixel boxes ``[x0, y0, x1, y1)`` overlap."""
    cells = set()
    for item in objects:
        x0, y0, x1, y1 = item["bbox"]
        for row in range(y0 * grid // size, (y1 - 1) * grid // size + 1):
            for col in range(x0 * grid // size, (x1 - 1) * grid // size + 1):
                cells.add(row * grid + col)
    return sorted(cells)


def sequence_layout(image_placement: str, prompt_ids: list[int], sequence_length: int) -> tuple[int, int, int]:
    """(first visual token, visual token count, last prompt token) in the decoder sequence of one unpadded prompt:
    ``[visual][text][pad]`` ("prefix") or the visual tokens where the placeholder stood ("token"); the placeholder
    leaves one pad at the end."""
    visual_count = sequence_length - len(prompt_ids)
    first = 0 if image_placement == "prefix" else prompt_ids.index(IMAGE_TOKEN_INDEX)
    return first, visual_count, visual_count + len(prompt_ids) - 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved MF-RSVLM folder (config.json, weights, tokenizer)")
    parser.add_argument("--data", required=True, help="a synthetic benchmark folder (scenes.json, test.json, images)")
    parser.add_argument("--types", default=",".join(TYPES), help="question types to read")
    parser.add_argument("--limit", type=int, default=300, help="questions per type (the first ones of the split)")
    parser.add_argument("--template", default="vicuna_v1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="JSON file for the figures (printed either way)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    scenes = {scene["image"]: scene for scene in json.loads((data / "scenes.json").read_text())}
    types = [name for name in args.types.split(",") if name]
    unknown = sorted(set(types) - set(TYPES))
    if unknown:
        parser.error(f"--types: {unknown} not among {TYPES}")
    questions, taken = [], defaultdict(int)
    for record in json.loads((data / "test.json").read_text()):
        kind, kind_type = record.get("kind"), record.get("question_type")
        if kind_type in types and taken[kind_type] < args.limit and scenes[record["image"]]["objects"] and any(
                item["kind"] == kind for item in scenes[record["image"]]["objects"]):
            questions.append(record)
            taken[kind_type] += 1
    model = MFRSVLM.from_pretrained(args.model).eval()
    tokenizer = Tokenizer.from_pretrained(args.model)
    processor = ImageProcessor(model.config.input_size)
    started = time.time()
    weights: list[torch.Tensor] = []
    figures: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for record in questions:
        scene = scenes[record["image"]]
        question = record["conversations"][0]["value"].replace("<image>", "").strip()
        ids = tokenize_prompt(build_prompt(args.template, question), tokenizer)
        weights.clear()
        with torch.no_grad(), causal_attention_weights(weights):
            model(processor(load_image(data / record["image"])).unsqueeze(0), torch.tensor([ids]))
        first, visual_count, last_prompt_token = sequence_layout(model.config.image_placement, ids,
                                                                 weights[0].shape[-1])
        grid = math.isqrt(visual_count)
        if grid * grid != visual_count:
            raise ValueError(f"{args.model}: {visual_count} visual tokens do not form a square grid")
        cells = object_cells([o for o in scene["objects"] if o["kind"] == record["kind"]], scene["size"], grid)
        for layer, layer_weights in enumerate(weights):
            visual = layer_weights[:, last_prompt_token, first:first + visual_count]
            mass = reduce(visual, "h n -> h", "sum")
            share = visual[:, cells].sum(-1) / mass
            figures[record["question_type"]][layer].append(
                (mass.max().item(), share.max().item() * visual_count / len(cells)))
    result = {"model": args.model, "data": args.data, "seconds": round(time.time() - started, 1), "by_type": {}}
    for kind_type, layers in figures.items():
        result["by_type"][kind_type] = {
            f"layer {layer + 1}": {"questions": len(rows),
                                   "image_mass": round(sum(row[0] for row in rows) / len(rows), 3),
                                   "object_lift": round(sum(row[1] for row in rows) / len(rows), 2)}
            for layer, rows in sorted(layers.items())}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
