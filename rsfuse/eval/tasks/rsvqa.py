"""RSVQA-LR reader (Zenodo release 6344334): ``LR_split_<split>_{questions,answers,images}.json`` + ``Images_LR/``.

Release layout: ``{"questions": [{"id", "img_id", "type", "question", "answers_ids", "active", ...}]}``,
``{"answers": [{"id", "question_id", "answer", "active", ...}]}``, ``{"images": [{"id", "questions_ids", "active"}]}``;
images are ``Images_LR/<img_id>.tif``. Inactive questions are skipped. Question types are ``presence``, ``comp``
(read as ``comparison``), ``rural_urban`` and ``count``. When a split file holds only ``{"id", "active"}`` flags, the
text is taken from ``all_questions.json`` / ``all_answers.json`` in the same folder.
A flattened JSON list is also accepted: ``{"id"|"question_id", "image"|"img_id", "question"|"text",
"answer"|"ground_truth", "type"|"category"}``.
"""

import os
from pathlib import Path
from typing import Any

from rsfuse.eval.tasks.common import read_json_file, require, resolve_image
from rsfuse.eval.tasks.registry import EvalTask
from rsfuse.eval.vqa import rsvqa_lr_scores

__all__ = ["RSVQA_LR_TASK", "RSVQA_PROMPT", "rsvqa_lr"]

RSVQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
TYPE_NAMES = {"comp": "comparison"}


def _listing(path: Path, key: str) -> list[dict]:
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected an object with a '{key}' list")
    return data[key]


def _first(entry: dict, names: tuple[str, ...], *, source: Path, index: int) -> Any:
    for name in names:
        if name in entry:
            return entry[name]
    raise KeyError(f"{source}: entry {index} has none of the fields {list(names)}")


def _record(identifier, image_path: Path, question: str, answer, kind: str) -> dict:
    kind = str(kind).strip().lower()
    return {
        "id": str(identifier),
        "image_path": image_path,
        "question": question,
        "prompt": RSVQA_PROMPT.format(question=question),
        "answer": str(answer),
        "type": TYPE_NAMES.get(kind, kind),
    }


def _from_release(folder: Path, split: str, image_root: Path, check_images: bool) -> list[dict]:
    questions_path = folder / f"LR_split_{split}_questions.json"
    questions = _listing(questions_path, "questions")
    answers = _listing(folder / f"LR_split_{split}_answers.json", "answers")
    if questions and all("question" not in entry for entry in questions if entry.get("active", True)):
        full_questions = {entry["id"]: entry for entry in _listing(folder / "all_questions.json", "questions")}
        questions = [{**full_questions[entry["id"]], **entry} for entry in questions]
        answers = _listing(folder / "all_answers.json", "answers")
    answer_by_id = {entry["id"]: entry for entry in answers}
    records = []
    for index, entry in enumerate(questions):
        if not entry.get("active", True):
            continue
        answer_ids = require(entry, "answers_ids", source=questions_path, index=index)
        active_answers = [
            answer_by_id[i] for i in answer_ids if i in answer_by_id and answer_by_id[i].get("active", True)
        ]
        if not active_answers:
            raise KeyError(f"{questions_path}: question {entry.get('id')} has no active answer among {answer_ids}")
        image_id = require(entry, "img_id", source=questions_path, index=index)
        records.append(
            _record(
                require(entry, "id", source=questions_path, index=index),
                resolve_image(image_root, f"{image_id}.tif", check=check_images, source=questions_path),
                str(require(entry, "question", source=questions_path, index=index)),
                active_answers[0]["answer"],
                require(entry, "type", source=questions_path, index=index),
            )
        )
    return records


def _from_flat(source: Path, image_root: Path, check_images: bool) -> list[dict]:
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of RSVQA-LR questions, got {type(data).__name__}")
    records = []
    for index, entry in enumerate(data):
        image = _first(entry, ("image", "img_id", "image_id"), source=source, index=index)
        image_name = f"{image}.tif" if isinstance(image, int) or Path(str(image)).suffix == "" else str(image)
        records.append(
            _record(
                entry.get("id", entry.get("question_id", index)),
                resolve_image(image_root, image_name, check=check_images, source=source),
                str(_first(entry, ("question", "text"), source=source, index=index)),
                _first(entry, ("answer", "ground_truth"), source=source, index=index),
                _first(entry, ("type", "category", "question_type"), source=source, index=index),
            )
        )
    return records


def rsvqa_lr(
    source: str | os.PathLike,
    *,
    split: str = "test",
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
) -> list[dict]:
    """Records ``{id, image_path, question, prompt, answer, type}`` (types: presence, comparison, rural_urban, count).

    ``source`` is the release folder (``image_root`` defaults to ``source/Images_LR``) or a flattened JSON list
    (``image_root`` defaults to the file's folder).
    """
    source = Path(source)
    if source.is_dir():
        root = Path(image_root) if image_root is not None else source / "Images_LR"
        return _from_release(source, split, root, check_images)
    root = Path(image_root) if image_root is not None else source.parent
    return _from_flat(source, root, check_images)


RSVQA_LR_TASK = EvalTask(
    name="rsvqa_lr",
    summary="RSVQA-LR (the Zenodo release folder, one split, or a flattened JSON list)",
    protocols=("rseval",),
    reader=lambda data, root, split, check: rsvqa_lr(data, split=split, image_root=root, check_images=check),
    scorer=lambda records, protocol: rsvqa_lr_scores(records),
)
