"""Scene classification readers: a folder per class (AID, NWPU-RESISC45, UCMerced as released) or a JSON list.

Folder layout: ``root/<class>/<image>``; classes are the sub-folder names, sorted; the answer is the class name with
underscores shown as spaces (``basketball_court`` -> ``basketball court``), and the prompt lists all classes.
JSON layout: a list of ``{"image", "question", "answer"}`` (also ``"ground_truth"``); the question is used as the
prompt, with the class list appended when ``classes`` is given and the question does not already hold it.
"""

import os
from pathlib import Path

from rsfuse.eval.matching import classification_scores
from rsfuse.eval.tasks.common import IMAGE_SUFFIXES, read_json_file, require, resolve_image
from rsfuse.eval.tasks.registry import EvalTask

__all__ = ["CLASSIFICATION_PROMPT", "CLS_TASK", "cls"]

CLASSIFICATION_PROMPT = (
    "Classify the remote sensing image into one of the following classes: {classes}.\n"
    "Answer with the class name only."
)


def _display(name: str) -> str:
    return name.replace("_", " ").strip()


def _from_folders(root: Path, prompt_template: str) -> list[dict]:
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    if not class_dirs:
        raise ValueError(f"{root}: no class sub-folders found")
    class_names = [_display(path.name) for path in class_dirs]
    prompt = prompt_template.format(classes=", ".join(class_names))
    records = []
    for class_dir, class_name in zip(class_dirs, class_names):
        for image in sorted(path for path in class_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES):
            records.append(
                {
                    "id": f"{class_dir.name}/{image.name}",
                    "image_path": image,
                    "prompt": prompt,
                    "answer": class_name,
                    "classes": class_names,
                    "type": "classification",
                }
            )
    if not records:
        raise ValueError(f"{root}: class folders hold no images with suffixes {IMAGE_SUFFIXES}")
    return records


def _from_json(source: Path, image_root: Path, classes: list[str] | None, check_images: bool,
               prompt_template: str) -> list[dict]:
    data = read_json_file(source)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of {{image, question, answer}}, got {type(data).__name__}")
    class_list = ", ".join(classes) if classes else None
    records = []
    for index, entry in enumerate(data):
        question = str(require(entry, "question", source=source, index=index))
        if class_list and class_list not in question:
            question = f"{question}\n{prompt_template.format(classes=class_list)}"
        answer = entry.get("answer", entry.get("ground_truth"))
        if answer is None and ("answer" in entry or "ground_truth" in entry):
            raise ValueError(f"{source}: entry {index} has 'answer': null (a bad record: give it a value or remove it)")
        if answer is None:
            raise KeyError(f"{source}: entry {index} has no 'answer' (or 'ground_truth') field")
        records.append(
            {
                "id": str(entry.get("id", entry.get("question_id", index))),
                "image_path": resolve_image(image_root, str(require(entry, "image", source=source, index=index)),
                                            check=check_images, source=source),
                "prompt": question,
                "answer": str(answer),
                "classes": list(classes) if classes else None,
                "type": "classification",
            }
        )
    return records


def cls(
    source: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    prompt_template: str = CLASSIFICATION_PROMPT,
    check_images: bool = True,
) -> list[dict]:
    """Records ``{id, image_path, prompt, answer, classes, type="classification"}``.

    ``source`` is a folder of class folders, or a JSON list (images resolved against ``image_root``, default: the
    JSON file's folder).
    """
    source = Path(source)
    if source.is_dir():
        return _from_folders(source, prompt_template)
    root = Path(image_root) if image_root is not None else source.parent
    return _from_json(source, root, classes, check_images, prompt_template)


CLS_TASK = EvalTask(
    name="cls",
    summary="scene classification (a folder of class folders as AID / NWPU-RESISC45 / UCM ship, or a JSON list)",
    protocols=("rseval",),
    reader=lambda data, root, split, check: cls(data, image_root=root, check_images=check),
    scorer=lambda records, protocol: classification_scores(records),
)
