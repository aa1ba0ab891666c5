"""VRSBench readers: ``VRSBench_EVAL_vqa.json`` and ``VRSBench_EVAL_Cap.json`` with images in ``Images_val/``.

Both files are JSON lists of ``{"image_id", "question", "ground_truth", "dataset", "question_id", "type"}``
(captions have ``type`` ``"caption"``). Prompts are the MF-RSVLM evaluation prompts.
"""

import os
from pathlib import Path

from rsfuse.eval.captions import java_available
from rsfuse.eval.tasks.common import read_json_file, require, resolve_image
from rsfuse.eval.tasks.registry import EvalTask
from rsfuse.eval.vqa import vrsbench_vqa_score

__all__ = [
    "VRSBENCH_CAPTION_PROMPT",
    "VRSBENCH_CAP_TASK",
    "VRSBENCH_VQA_PROMPT",
    "VRSBENCH_VQA_TASK",
    "caption_protocol",
    "score_captions",
    "vrsbench_cap",
    "vrsbench_vqa",
]

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


# ---------------------------------------------------------------------------------------------------- tasks


def caption_protocol() -> str:
    """``auto`` for captions: ``coco`` when Java runs (pycocoevalcap's PTB tokenizer and METEOR), else ``compat``."""
    return "coco" if java_available()[0] else "compat"


def score_captions(records, protocol: str) -> dict:
    """`caption_scores` on caption records (``answers`` = references) carrying ``prediction``."""
    from rsfuse.eval.captions import caption_scores

    predictions = {str(record["id"]): str(record["prediction"]) for record in records}
    references = {str(record["id"]): list(record["answers"]) for record in records}
    return caption_scores(predictions, references, protocol=protocol)


def _images_val(data: Path, image_root: Path | None) -> Path:
    return image_root if image_root is not None else data.parent / "Images_val"


VRSBENCH_VQA_TASK = EvalTask(
    name="vrsbench_vqa",
    summary="VRSBench VQA (VRSBench_EVAL_vqa.json, images in Images_val/ beside it)",
    protocols=("official", "lenient"),
    reader=lambda data, root, split, check: vrsbench_vqa(data, _images_val(data, root), check_images=check),
    scorer=lambda records, protocol: vrsbench_vqa_score(records, protocol=protocol),
)

VRSBENCH_CAP_TASK = EvalTask(
    name="vrsbench_cap",
    summary="VRSBench captions (VRSBench_EVAL_Cap.json, images in Images_val/ beside it)",
    protocols=("auto", "coco", "compat"),
    reader=lambda data, root, split, check: vrsbench_cap(data, _images_val(data, root), check_images=check),
    scorer=score_captions,
    auto_protocol=caption_protocol,
)
