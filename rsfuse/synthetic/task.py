"""The synthetic benchmark as an evaluation task (``rsfuse eval task=synthetic``): its reader and `SYNTHETIC_TASK`,
which the evaluation registry (`rsfuse.eval.tasks.registry`) imports and registers the first time it is read.

The reader takes the benchmark's files (`rsfuse.synthetic.generate`): a LLaVA-style JSON list whose entries also carry
``question_type``, ``answer`` and ``small_object``:
``{"id", "image", "source_dataset"?, "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": ...}], "question_type", "answer", "small_object"}``.
The prompt is the first human turn without the ``<image>`` marker; the image is ``root/source_dataset/image`` or
``root/image``.
"""

import os
from pathlib import Path

from rsfuse.eval.tasks.common import read_json_file, require, resolve_image
from rsfuse.eval.tasks.registry import EvalTask
from rsfuse.eval.vqa import synthetic_scores

__all__ = ["SYNTHETIC_TASK", "synthetic"]

IMAGE_MARKER = "<image>"


def synthetic(annotation: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
              check_images: bool = True) -> list[dict]:
    """Records ``{id, image_path, prompt, question, answer, type, small_object}``."""
    source = Path(annotation)
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of LLaVA-style entries, got {type(data).__name__}")
    root = Path(image_root) if image_root is not None else source.parent
    records = []
    for index, entry in enumerate(data):
        turns = require(entry, "conversations", source=source, index=index)
        human = next((turn["value"] for turn in turns if turn.get("from") == "human"), None)
        if human is None:
            raise ValueError(f"{source}: entry {index} has no human turn in 'conversations'")
        if "answer" in entry and entry["answer"] is None:
            raise ValueError(f"{source}: entry {index} has 'answer': null (a bad record: give it a value or remove "
                             "the field to use the gpt turn)")
        answer = entry.get("answer")
        if answer is None:
            answer = next((turn["value"] for turn in turns if turn.get("from") == "gpt"), None)
        if answer is None:
            raise KeyError(f"{source}: entry {index} has neither an 'answer' field nor a gpt turn")
        image = str(require(entry, "image", source=source, index=index))
        folder = root / entry["source_dataset"] if entry.get("source_dataset") else root
        question = human.replace(IMAGE_MARKER, "").strip()
        records.append(
            {
                "id": str(entry.get("id", index)),
                "image_path": resolve_image(folder, image, check=check_images, source=source),
                "prompt": question,
                "question": question,
                "answer": str(answer),
                "type": str(require(entry, "question_type", source=source, index=index)),
                "small_object": bool(entry.get("small_object", False)),
            }
        )
    return records


SYNTHETIC_TASK = EvalTask(
    name="synthetic",
    summary="the project's synthetic benchmark (LLaVA-style list with question_type / answer / small_object)",
    protocols=("synthetic",),
    reader=lambda data, root, split, check: synthetic(data, root, check_images=check),
    scorer=lambda records, protocol: synthetic_scores(records),
)
