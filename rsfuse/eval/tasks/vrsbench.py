"""VRSBench readers: ``VRSBench_EVAL_vqa.json`` and ``VRSBench_EVAL_Cap.json`` with images in ``Images_val/``.

Both files are JSON lists of ``{"image_id", "question", "ground_truth", "dataset", "question_id", "type"}``
(captions have ``type`` ``"caption"``). Prompts are the MF-RSVLM evaluation prompts.

Also the per-image annotation folder that the authors' ``scripts/evaluate_vrsbench.py`` reads: ``data`` is
``DATA_ROOT`` (or ``DATA_ROOT/annotations/Annotations_val`` itself), one ``*.json`` per image with ``image``,
``caption`` and ``qa_pairs`` (``[{"ques_id", "question", "answer", "type"}]``), images in
``DATA_ROOT/images/Images_val/`` (or ``DATA_ROOT/images/``; ``image_root`` overrides). The same question about the same
image gives the same record (prompt, type, answer) as the EVAL JSON; ids are ``ques_id`` (captions: the image name).
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


ANNOTATION_FOLDER = Path("annotations") / "Annotations_val"


def _annotation_folder(data: Path) -> Path | None:
    """The per-image annotation folder ``data`` names (DATA_ROOT or the folder itself), None for a file."""
    if not data.is_dir():
        return None
    return data / ANNOTATION_FOLDER if (data / ANNOTATION_FOLDER).is_dir() else data


def _folder_images(data: Path) -> Path:
    """Default image folder of an annotation folder: DATA_ROOT/images/Images_val, else DATA_ROOT/images."""
    folder = _annotation_folder(data)
    root = folder.parent.parent if folder is not None and folder.name == ANNOTATION_FOLDER.name else data
    images = root / "images"
    return images / "Images_val" if (images / "Images_val").is_dir() else images


def _folder_entries(folder: Path) -> list[tuple[Path, dict]]:
    """``(file, annotation)`` for every ``*.json`` of the per-image folder, in name order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.json annotation files (expected VRSBench's "
                                "annotations/Annotations_val/)")
    entries = []
    for path in files:
        data = read_json_file(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'image', 'caption' and 'qa_pairs', got "
                             f"{type(data).__name__}")
        entries.append((path, data))
    return entries


def _vqa_from_folder(folder: Path, root: Path, check_images: bool) -> list[dict]:
    records = []
    for path, entry in _folder_entries(folder):
        image = resolve_image(root, str(require(entry, "image", source=path, index=0)), check=check_images,
                              source=path)
        pairs = require(entry, "qa_pairs", source=path, index=0)
        if not isinstance(pairs, list):
            raise ValueError(f"{path}: 'qa_pairs' is a {type(pairs).__name__}, expected a list")
        for number, pair in enumerate(pairs):
            question = str(require(pair, "question", source=path, index=number)).strip()
            identifier = pair.get("ques_id") if isinstance(pair, dict) else None
            records.append({
                "id": str(identifier) if identifier is not None else f"{Path(image).stem}:{number}",
                "image_path": image,
                "question": question,
                "prompt": VRSBENCH_VQA_PROMPT.format(question=question),
                "answer": str(require(pair, "answer", source=path, index=number)),
                "type": str(require(pair, "type", source=path, index=number)).strip().lower(),
            })
    return records


def _captions_from_folder(folder: Path, root: Path, check_images: bool) -> list[dict]:
    records = []
    for path, entry in _folder_entries(folder):
        name = str(require(entry, "image", source=path, index=0))
        records.append({
            "id": name,
            "image_path": resolve_image(root, name, check=check_images, source=path),
            "prompt": VRSBENCH_CAPTION_PROMPT,
            "answers": [str(require(entry, "caption", source=path, index=0))],
            "type": "caption",
        })
    return records


def _entries(annotation: str | os.PathLike) -> tuple[Path, list]:
    source = Path(annotation)
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of VRSBench entries, got {type(data).__name__}")
    return source, data


def vrsbench_vqa(
    annotation: str | os.PathLike, image_root: str | os.PathLike | None, *, check_images: bool = True
) -> list[dict]:
    """Records ``{id, image_path, question, prompt, answer, type}``; ``type`` lower-cased and stripped. ``annotation``
    is ``VRSBench_EVAL_vqa.json`` or the per-image annotation folder (see the module docstring)."""
    folder = _annotation_folder(Path(annotation))
    if folder is not None:
        root = Path(image_root) if image_root is not None else _folder_images(Path(annotation))
        return _vqa_from_folder(folder, root, check_images)
    source, data = _entries(annotation)
    root = Path(image_root) if image_root is not None else source.parent / "Images_val"
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
    annotation: str | os.PathLike, image_root: str | os.PathLike | None, *, check_images: bool = True
) -> list[dict]:
    """Records ``{id, image_path, prompt, answers (one reference caption), type="caption"}``; ``annotation`` is
    ``VRSBench_EVAL_Cap.json`` or the per-image annotation folder."""
    folder = _annotation_folder(Path(annotation))
    if folder is not None:
        root = Path(image_root) if image_root is not None else _folder_images(Path(annotation))
        return _captions_from_folder(folder, root, check_images)
    source, data = _entries(annotation)
    root = Path(image_root) if image_root is not None else source.parent / "Images_val"
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


def _images_val(data: Path, image_root: Path | None) -> Path | None:
    """The image folder given, or None: each reader then takes its layout's default (``Images_val/`` beside the
    EVAL JSON; ``images/Images_val/`` of the annotation folder's root)."""
    return image_root


VRSBENCH_VQA_TASK = EvalTask(
    name="vrsbench_vqa",
    summary="VRSBench VQA (VRSBench_EVAL_vqa.json, images in Images_val/ beside it; or the per-image "
            "annotations/Annotations_val/ folder)",
    protocols=("official", "lenient"),
    reader=lambda data, root, split, check: vrsbench_vqa(data, _images_val(data, root), check_images=check),
    scorer=lambda records, protocol: vrsbench_vqa_score(records, protocol=protocol),
)

VRSBENCH_CAP_TASK = EvalTask(
    name="vrsbench_cap",
    summary="VRSBench captions (VRSBench_EVAL_Cap.json, images in Images_val/ beside it; or the per-image "
            "annotations/Annotations_val/ folder)",
    protocols=("auto", "coco", "compat"),
    reader=lambda data, root, split, check: vrsbench_cap(data, _images_val(data, root), check_images=check),
    scorer=score_captions,
    auto_protocol=caption_protocol,
)
