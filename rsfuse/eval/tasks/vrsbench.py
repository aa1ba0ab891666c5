"""VRSBench readers: ``VRSBench_EVAL_vqa.json`` and ``VRSBench_EVAL_Cap.json`` with images in ``Images_val/``.

Both files are JSON lists of ``{"image_id", "question", "ground_truth", "dataset", "question_id", "type"}``
(captions have ``type`` ``"caption"``). Prompts are the MF-RSVLM evaluation prompts.
"""

import os
from pathlib import Path

from rsfuse.eval.tasks.common import read_json_file, require, resolve_image

__all__ = ["VRSBENCH_CAPTION_PROMPT", "VRSBENCH_VQA_PROMPT", "vrsbench_cap", "vrsbench_vqa"]

VRSBENCH_VQA_PROMPT = "Answer the question based on the remote sensing image.\nQuestion: {question}\nAnswer:"
VRSBENCH_CAPTION_PROMPT = "Please provide a detailed caption for the remote sensing image."


def _entries(annotation: str | os.PathLike) -> tuple[Path, list]:
    source = Path(annotation)
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of VRSBench entries, got {type(data).__name__}")
    return source, data


def vrsbench_vqa(
    annotation: str | os.PathLike, image_root: str | os.PathLike, *, check_images: bool = True
) -> list[dict]:
    """Records ``{id, image_path, question, prompt, answer, type}``; ``type`` lower-cased and stripped."""
    source, data = _entries(annotation)
    root = Path(image_root)
    records = []
    for index, entry in enumerate(data):
        question = str(require(entry, "question", source=source, index=index))
        records.append(
            {
                "id": str(entry.get("question_id", index)),
                "image_path": resolve_image(root, str(require(entry, "image_id", source=source, index=index)),
                                            check=check_images, source=source),
                "question": question,
                "prompt": VRSBENCH_VQA_PROMPT.format(question=question),
                "answer": str(require(entry, "ground_truth", source=source, index=index)),
                "type": str(require(entry, "type", source=source, index=index)).strip().lower(),
            }
        )
    return records


def vrsbench_cap(
    annotation: str | os.PathLike, image_root: str | os.PathLike, *, check_images: bool = True
) -> list[dict]:
    """Records ``{id, image_path, prompt, answers (one reference caption), type="caption"}``."""
    source, data = _entries(annotation)
    root = Path(image_root)
    records = []
    for index, entry in enumerate(data):
        records.append(
            {
                "id": str(entry.get("question_id", index)),
                "image_path": resolve_image(root, str(require(entry, "image_id", source=source, index=index)),
                                            check=check_images, source=source),
                "prompt": VRSBENCH_CAPTION_PROMPT,
                "answers": [str(require(entry, "ground_truth", source=source, index=index))],
                "type": "caption",
            }
        )
    return records
