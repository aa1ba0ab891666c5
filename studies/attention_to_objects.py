"""Does a trained model's decoder find the object a question asks about, and does its answer carry what it read?

A diagnostic for the synthetic ablation study (``python -m studies.ablate_synthetic``), in two parts:

* **find** (test questions about one object kind: colour, position, count): the model's forward pass on the prompt,
  recording at every decoder layer the attention of the last prompt token (the one that predicts the answer's first
  token) over the global visual tokens. Per question type and layer: the largest image share of any head
  (``image_mass``) and ``object_lift``, the best head's share of its image attention on the global-token cells the
  asked objects overlap, divided by those cells' share of the grid (1.0 = no more than uniform).
* **read** (``--read-questions N`` training questions per type, colour and position: one instance of the kind): linear
  probes, fitted on 80% and scored on the rest, for the asked object's colour / quadrant from (a) the object's
  visual token as each layer's attention sees it (after the injection and the input norm) and (b) the last prompt
  token after each layer. The object token holding the answer while the answer position does not says the decoder
  finds the object but does not copy what it holds.

Example (seed 0 of the study in docs/ablations/ABLATIONS_large.md)::

    python studies/attention_to_objects.py --model runs/ablate_large/runs/mf_rsvlm/seed0/final \
        --data runs/ablate_large/data --limit 300 --out bench/results/attention_large_mf_seed0.json
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from einops import reduce
from torch import nn

from rsfuse.data import ImageProcessor, load_image
from rsfuse.llm.templates import build_prompt, tokenize_prompt
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer
from rsfuse.model import MFRSVLM
from rsfuse.options import DEFAULT_TEMPLATE
from studies._cli import emit_json

TYPES = ("colour", "position", "count")
READ_TYPES = ("colour", "position")


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


def questions_about_present_kinds(data: Path, split: str, scenes: dict, types, limit: int) -> list[dict]:
    """The first ``limit`` questions per type of ``split`` whose asked kind is in the image."""
    questions, taken = [], defaultdict(int)
    for record in json.loads((data / f"{split}.json").read_text()):
        kind, kind_type = record.get("kind"), record.get("question_type")
        if kind_type in types and taken[kind_type] < limit and any(
                item["kind"] == kind for item in scenes[record["image"]]["objects"]):
            questions.append(record)
            taken[kind_type] += 1
    return questions


class Recorder:
    """One forward pass per question, keeping each layer's attention weights, attention input and output."""

    def __init__(self, model: MFRSVLM, tokenizer: Tokenizer, data: Path, template: str) -> None:
        self.model, self.tokenizer, self.data, self.template = model, tokenizer, data, template
        self.processor = ImageProcessor(model.config.input_size)
        self.attention_inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(model.llm.model.layers):
            layer.self_attn.register_forward_pre_hook(self._keep_input(index), with_kwargs=True)
            layer.register_forward_hook(self._keep_output(index))

    def _keep_input(self, index):
        def hook(module, args, kwargs):
            self.attention_inputs[index] = (args[0] if args else kwargs["hidden_states"])[0]
        return hook

    def _keep_output(self, index):
        def hook(module, args, output):
            self.outputs[index] = (output[0] if isinstance(output, tuple) else output)[0]
        return hook

    def run(self, record: dict) -> tuple[list[torch.Tensor], list[int], int]:
        """(per-layer weights ``[heads, queries, keys]``, the asked objects' cells, last prompt token); the visual
        tokens are ``self.first : self.first + self.visual_count``."""
        question = record["conversations"][0]["value"].replace("<image>", "").strip()
        ids = tokenize_prompt(build_prompt(self.template, question), self.tokenizer)
        with torch.no_grad():
            output = self.model(self.processor(load_image(self.data / record["image"])).unsqueeze(0),
                                torch.tensor([ids]), output_attentions=True)
        weights = [layer[0] for layer in output.attentions]  # [heads, queries, keys] of the one sample
        self.first, self.visual_count, last = sequence_layout(self.model.config.image_placement, ids,
                                                              weights[0].shape[-1])
        grid = math.isqrt(self.visual_count)
        if grid * grid != self.visual_count:
            raise ValueError(f"{self.visual_count} visual tokens do not form a square grid")
        scene = record["scene"]
        cells = object_cells([o for o in scene["objects"] if o["kind"] == record["kind"]], scene["size"], grid)
        return weights, cells, last


def find_figures(recorder: Recorder, questions: list[dict]) -> dict:
    rows: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for record in questions:
        weights, cells, last = recorder.run(record)
        first, count = recorder.first, recorder.visual_count
        for layer, layer_weights in enumerate(weights):
            visual = layer_weights[:, last, first:first + count]
            mass = reduce(visual, "h n -> h", "sum")
            share = visual[:, cells].sum(-1) / mass
            rows[record["question_type"]][layer].append((mass.max().item(), share.max().item() * count / len(cells)))
    return {kind_type: {f"layer {layer + 1}": {"questions": len(values),
                                               "image_mass": round(sum(v[0] for v in values) / len(values), 3),
                                               "object_lift": round(sum(v[1] for v in values) / len(values), 2)}
                        for layer, values in sorted(layers.items())}
            for kind_type, layers in rows.items()}


def held_out_accuracy(features: torch.Tensor, labels: torch.Tensor, *, steps: int = 400) -> tuple[float, float]:
    """(held-out accuracy, held-out majority share) of a linear probe fitted on the first 80% (standardised)."""
    split = int(0.8 * len(labels))
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    features = (features - mean) / std
    torch.manual_seed(0)
    probe = nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(features[:split]), labels[:split]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (probe(features[split:]).argmax(-1) == labels[split:]).float().mean().item()
    majority = torch.bincount(labels[split:]).max().item() / (len(labels) - split)
    return round(accuracy, 3), round(majority, 3)


def read_figures(recorder: Recorder, questions: list[dict]) -> dict:
    result = {}
    for kind_type in READ_TYPES:
        chosen = [record for record in questions if record["question_type"] == kind_type]
        if len(chosen) < 10:
            continue
        answers = sorted({record["answer"] for record in chosen})
        at_object, at_answer = defaultdict(list), defaultdict(list)
        for record in chosen:
            _, _, last = recorder.run(record)
            scene = record["scene"]
            x0, y0, x1, y1 = next(o for o in scene["objects"] if o["kind"] == record["kind"])["bbox"]
            centre = object_cells([{"bbox": [(x0 + x1) // 2, (y0 + y1) // 2, (x0 + x1) // 2 + 1, (y0 + y1) // 2 + 1]}],
                                  scene["size"], math.isqrt(recorder.visual_count))[0]
            for layer in recorder.outputs:
                at_object[layer].append(recorder.attention_inputs[layer][recorder.first + centre].float())
                at_answer[layer].append(recorder.outputs[layer][last].float())
        labels = torch.tensor([answers.index(record["answer"]) for record in chosen])
        figures = {}
        for layer in sorted(at_object):
            object_accuracy, majority = held_out_accuracy(torch.stack(at_object[layer]), labels)
            answer_accuracy, _ = held_out_accuracy(torch.stack(at_answer[layer]), labels)
            figures[f"layer {layer + 1}"] = {"object_token": object_accuracy, "answer_position": answer_accuracy,
                                             "majority": majority}
        result[kind_type] = {"questions": len(chosen), "classes": answers, "held_out_accuracy": figures}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved MF-RSVLM folder (config.json, weights, tokenizer)")
    parser.add_argument("--data", required=True, help="a synthetic benchmark folder (scenes.json, test.json, images)")
    parser.add_argument("--types", default=",".join(TYPES), help="question types for the find part")
    parser.add_argument("--limit", type=int, default=300, help="find: test questions per type (the first ones)")
    parser.add_argument("--read-questions", type=int, default=0,
                        help="read: training questions per type for the probes (0: skip the read part)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="JSON file for the figures (printed either way)")
    args = parser.parse_args(argv)
    types = [name for name in args.types.split(",") if name]
    unknown = sorted(set(types) - set(TYPES))
    if unknown:
        parser.error(f"--types: {unknown} not among {TYPES}")
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    scenes = {scene["image"]: scene for scene in json.loads((data / "scenes.json").read_text())}

    def with_scenes(records):
        return [{**record, "scene": scenes[record["image"]]} for record in records]

    model = MFRSVLM.from_pretrained(args.model).eval()
    recorder = Recorder(model, Tokenizer.from_pretrained(args.model), data, args.template)
    started = time.time()
    result = {"model": args.model, "data": args.data}
    result["find"] = find_figures(recorder, with_scenes(questions_about_present_kinds(
        data, "test", scenes, types, args.limit)))
    if args.read_questions:
        result["read"] = read_figures(recorder, with_scenes(questions_about_present_kinds(
            data, "train", scenes, READ_TYPES, args.read_questions)))
    result["seconds"] = round(time.time() - started, 1)
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
