"""Karpathy-style caption files (``dataset_ucm.json`` / ``dataset_sydney.json`` / ``dataset_rsicd.json``):
``{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens", ...}], ...}], "dataset": ...}``.
"""

import os
from pathlib import Path

from rsfuse.eval.tasks.common import read_json_file, require, resolve_image
from rsfuse.eval.tasks.registry import EvalTask
from rsfuse.eval.tasks.vrsbench import VRSBENCH_CAPTION_PROMPT, caption_protocol, score_captions

__all__ = ["CAPTION_PROMPT", "CAPTION_TASK", "caption"]

# The MF-RSVLM authors' caption instruction for every caption benchmark.
CAPTION_PROMPT = VRSBENCH_CAPTION_PROMPT


def caption(
    annotation: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    split: str | None = "test",
    prompt: str = CAPTION_PROMPT,
    check_images: bool = True,
) -> list[dict]:
    """Records ``{id, image_path, prompt, answers (raw reference sentences), split, type="caption"}``.

    ``split=None`` keeps every image. The id is ``imgid`` when present, else the file name.
    """
    source = Path(annotation)
    data = read_json_file(source)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{source}: expected a Karpathy-style object with an 'images' list")
    root = Path(image_root)
    records = []
    for index, entry in enumerate(data["images"]):
        if split is not None and entry.get("split") != split:
            continue
        sentences = require(entry, "sentences", source=source, index=index)
        references = [str(sentence["raw"]).strip() for sentence in sentences if str(sentence.get("raw", "")).strip()]
        if not references:
            raise ValueError(f"{source}: image entry {index} ({entry.get('filename')}) has no reference sentences")
        filename = str(require(entry, "filename", source=source, index=index))
        records.append(
            {
                "id": str(entry.get("imgid", filename)),
                "image_path": resolve_image(root, filename, check=check_images, source=source),
                "prompt": prompt,
                "answers": references,
                "split": entry.get("split"),
                "type": "caption",
            }
        )
    if not records:
        raise ValueError(f"{source}: no images in split {split!r}")
    return records


CAPTION_TASK = EvalTask(
    name="caption",
    summary="Karpathy-style caption file (UCM / Sydney / RSICD captions; images in images/ beside it), one split",
    protocols=("auto", "coco", "compat"),
    reader=lambda data, root, split, check: caption(data, root if root is not None else data.parent / "images",
                                                    split=split, check_images=check),
    scorer=score_captions,
    auto_protocol=caption_protocol,
)
