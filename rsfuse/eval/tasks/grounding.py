"""Visual grounding reader. Three JSON-list layouts are recognised per entry:

- MF-RSVLM manifest (``evaluate_vg.py``): ``{"image_path", "sentence", "bbox" (pixels), "image_width",
  "image_height", "dataset"?}``;
- VRSBench ``VRSBench_EVAL_referring.json``: ``{"image_id", "question", "ground_truth": "{<x1><y1><x2><y2>}"}`` with
  coordinates on a 0-100 scale;
- generic: ``{"image", "sentence"|"question", "box"}`` with ``box`` on the 0-1000 scale of the instruction data.
Records carry the ground-truth ``box`` with its ``box_scale`` (``"pixel"``, 100 or 1000) and ``image_size`` when known.
"""

import os
from pathlib import Path

from rsfuse.eval.grounding import grounding_scores, parse_box
from rsfuse.eval.tasks.common import read_json_file, resolve_image
from rsfuse.eval.tasks.registry import EvalTask

__all__ = ["GROUNDING_PROMPT", "GROUNDING_TASK", "grounding"]

# The authors' grounding instruction (0-1000 output scale).
GROUNDING_PROMPT = (
    "{{VG}} {sentence} Answer with bounding box coordinates [x_min, y_min, x_max, y_max] scaled to 0-1000 (inclusive)."
)


def grounding(
    annotation: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    prompt_template: str = GROUNDING_PROMPT,
    check_images: bool = True,
) -> list[dict]:
    """Records ``{id, image_path, sentence, prompt, box, box_scale, image_size, dataset, type="grounding"}``."""
    source = Path(annotation)
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of grounding entries, got {type(data).__name__}")
    root = Path(image_root) if image_root is not None else source.parent
    records = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {index} is a {type(entry).__name__}, expected an object")
        if "bbox" in entry and "image_path" in entry:
            image, raw_box, box_scale = entry["image_path"], entry["bbox"], "pixel"
            sentence = entry.get("sentence")
        elif "image_id" in entry and "ground_truth" in entry:
            image, raw_box, box_scale = entry["image_id"], entry["ground_truth"], 100
            sentence = entry.get("question")
        elif "box" in entry and "image" in entry:
            image, raw_box, box_scale = entry["image"], entry["box"], 1000
            sentence = entry.get("sentence", entry.get("question"))
        else:
            raise KeyError(
                f"{source}: entry {index} matches no grounding layout (fields: {sorted(entry)}); expected "
                "image_path+bbox+sentence, image_id+ground_truth+question, or image+box+sentence"
            )
        if sentence is None:
            raise KeyError(f"{source}: entry {index} has no referring sentence ('sentence' or 'question')")
        box = parse_box(raw_box)
        if box is None:
            raise ValueError(f"{source}: entry {index} has an unparseable box {raw_box!r}")
        if "image_width" in entry and "image_height" in entry:
            image_size = (int(entry["image_width"]), int(entry["image_height"]))
        elif box_scale == "pixel":
            raise KeyError(f"{source}: entry {index} has a pixel bbox but no image_width/image_height")
        else:
            image_size = None
        records.append(
            {
                "id": str(entry.get("id", entry.get("question_id", index))),
                "image_path": resolve_image(root, str(image), check=check_images, source=source),
                "sentence": str(sentence),
                "prompt": prompt_template.format(sentence=str(sentence).strip()),
                "box": box,
                "box_scale": box_scale,
                "image_size": image_size,
                "dataset": entry.get("dataset"),
                "type": "grounding",
            }
        )
    return records


GROUNDING_TASK = EvalTask(
    name="grounding",
    summary="visual grounding (MF-RSVLM manifest, VRSBench referring file, or image+box+sentence list)",
    protocols=("iou",),
    reader=lambda data, root, split, check: grounding(data, root, check_images=check),
    scorer=lambda records, protocol: grounding_scores(records),
)
