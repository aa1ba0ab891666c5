"""Tiny evaluation datasets written in the real release formats (VRSBench, class folders, Karpathy caption JSON,
RSVQA-LR, grounding manifests, the synthetic LLaVA-style benchmark). Each writer returns the paths it created and
the content it wrote, so tests can compare reader output with the source."""

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "write_class_folders",
    "write_classification_json",
    "write_grounding_files",
    "write_image",
    "write_karpathy_captions",
    "write_rsvqa_lr_flat",
    "write_rsvqa_lr_release",
    "write_synthetic_benchmark",
    "write_vrsbench",
]


def write_image(
    path: Path,
    *,
    size: tuple[int, int] = (16, 12),
    colour: tuple[int, int, int] = (40, 120, 200),
    texture: bool = True,
) -> Path:
    """A small RGB image; the suffix picks the format (.png, .jpg, .tif).

    ``texture`` (default) adds ±60 of noise around ``colour``, seeded by the folder and file name, so no two fixture
    images are alike and none is a single colour (a model fed the wrong pixels answers differently);
    ``texture=False`` paints ``colour`` alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.broadcast_to(np.asarray(colour, dtype=np.int16), (height, width, 3))
    if texture:
        seed = zlib.crc32(f"{path.parent.name}/{path.name}".encode())
        noise = np.random.default_rng(seed).integers(-60, 61, (height, width, 3))
        pixels = pixels + noise
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def write_vrsbench(root: Path) -> dict:
    """``VRSBench_EVAL_vqa.json``, ``VRSBench_EVAL_Cap.json`` and ``Images_val/`` as the release ships them."""
    images = root / "Images_val"
    for name in ("P0003_0002.png", "P0011_0000.png"):
        write_image(images / name)
    vqa = [
        {"image_id": "P0003_0002.png", "question": "How many small vehicles are there?", "ground_truth": "2",
         "dataset": "RSBench", "question_id": 0, "type": "object quantity"},
        {"image_id": "P0003_0002.png", "question": "Is there a harbor?", "ground_truth": "No",
         "dataset": "RSBench", "question_id": 1, "type": "object existence"},
        {"image_id": "P0011_0000.png", "question": "What is the color of the large ship?", "ground_truth": "white",
         "dataset": "RSBench", "question_id": 2, "type": " Object Color "},
    ]
    captions = [
        {"image_id": "P0003_0002.png", "ground_truth": "The image shows two small vehicles on a road.",
         "question": "Describe the image in detail", "dataset": "RSBench", "question_id": 0, "type": "caption"},
        {"image_id": "P0011_0000.png", "ground_truth": "A large white ship is docked at a harbor.",
         "question": "Describe the image in detail", "dataset": "RSBench", "question_id": 1, "type": "caption"},
    ]
    return {
        "vqa": _dump(root / "VRSBench_EVAL_vqa.json", vqa),
        "cap": _dump(root / "VRSBench_EVAL_Cap.json", captions),
        "images": images,
        "vqa_entries": vqa,
        "cap_entries": captions,
    }


def write_class_folders(root: Path, counts: dict[str, int] | None = None) -> dict[str, int]:
    """``root/<class>/<class>_<k>.<ext>`` as AID / NWPU-RESISC45 / UCMerced ship them, plus a stray text file."""
    counts = counts or {"airport": 2, "basketball_court": 1, "forest": 1}
    suffixes = (".jpg", ".png", ".tif")
    for class_index, (name, count) in enumerate(counts.items()):
        for k in range(count):
            write_image(root / name / f"{name}_{k:02d}{suffixes[(class_index + k) % 3]}")
    (root / "airport" / "readme.txt").write_text("not an image")
    return counts


def write_classification_json(root: Path) -> Path:
    """A JSON list of ``{image, question, answer}`` with images beside it."""
    for name in ("a.png", "b.png"):
        write_image(root / "imgs" / name)
    entries = [
        {"image": "imgs/a.png", "question": "What is the scene category of this image?", "answer": "airport"},
        {"image": "imgs/b.png", "question": "What is the scene category of this image?", "ground_truth": "forest"},
    ]
    return _dump(root / "cls_test.json", entries)


def write_karpathy_captions(root: Path, name: str = "dataset_ucm.json") -> dict:
    """A Karpathy-style caption file (UCM-Captions / Sydney-Captions / RSICD) with train and test images."""
    images = root / "imgs"
    entries = []
    sentence_id = 0
    for image_id, (filename, split, raws) in enumerate(
        [
            ("1.tif", "train", ["There is a piece of farmland .", "Many green fields ."]),
            ("2.tif", "test", ["An airplane is parked at the airport .", "A white plane on the apron .", " "]),
            ("3.tif", "test", ["Dense residential buildings with trees ."]),
        ]
    ):
        write_image(images / filename)
        sentences = []
        for raw in raws:
            sentences.append({"tokens": raw.lower().replace(".", "").split(), "raw": raw, "imgid": image_id,
                              "sentid": sentence_id})
            sentence_id += 1
        entries.append({"filename": filename, "imgid": image_id, "split": split, "sentences": sentences,
                        "sentids": [s["sentid"] for s in sentences]})
    return {"annotation": _dump(root / name, {"images": entries, "dataset": "ucm"}), "images": images,
            "entries": entries}


def write_rsvqa_lr_release(root: Path, split: str = "test", *, flags_only: bool = False) -> dict:
    """``LR_split_<split>_{questions,answers,images}.json`` and ``Images_LR/<id>.tif`` as on Zenodo.

    Holds one question of each type, one inactive question and one question whose answer is inactive-free.
    With ``flags_only`` the split files hold only ``{id, active}`` and the text goes to ``all_*.json``.
    """
    for image_id in (0, 1):
        write_image(root / "Images_LR" / f"{image_id}.tif", size=(8, 8))
    questions = [
        {"id": 0, "date_added": 1.0, "img_id": 0, "people_id": 0, "type": "rural_urban",
         "question": "Is it a rural or an urban area", "answers_ids": [0], "active": True},
        {"id": 1, "date_added": 1.0, "img_id": 0, "people_id": 0, "type": "presence",
         "question": "Is a road present?", "answers_ids": [1], "active": True},
        {"id": 2, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "comp",
         "question": "Are there more buildings than water areas?", "answers_ids": [2], "active": True},
        {"id": 3, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "count",
         "question": "How many buildings are there?", "answers_ids": [3], "active": True},
        {"id": 4, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "presence",
         "question": "Is a farmland present?", "answers_ids": [4], "active": False},
    ]
    answers = [
        {"id": 0, "date_added": 1.0, "question_id": 0, "people_id": 0, "answer": "rural", "active": True},
        {"id": 1, "date_added": 1.0, "question_id": 1, "people_id": 0, "answer": "yes", "active": True},
        {"id": 2, "date_added": 1.0, "question_id": 2, "people_id": 0, "answer": "no", "active": True},
        {"id": 3, "date_added": 1.0, "question_id": 3, "people_id": 0, "answer": "between 11 and 100", "active": True},
        {"id": 4, "date_added": 1.0, "question_id": 4, "people_id": 0, "answer": "no", "active": False},
    ]
    images = [
        {"id": 0, "date_added": 1.0, "people_id": 0, "questions_ids": [0, 1], "active": True},
        {"id": 1, "date_added": 1.0, "people_id": 0, "questions_ids": [2, 3, 4], "active": True},
    ]
    if flags_only:
        _dump(root / "all_questions.json", {"questions": questions})
        _dump(root / "all_answers.json", {"answers": answers})
        questions = [{"id": q["id"], "active": q["active"]} for q in questions]
        answers = [{"id": a["id"], "active": a["active"]} for a in answers]
    _dump(root / f"LR_split_{split}_questions.json", {"questions": questions})
    _dump(root / f"LR_split_{split}_answers.json", {"answers": answers})
    _dump(root / f"LR_split_{split}_images.json", {"images": images})
    return {"root": root}


def write_rsvqa_lr_flat(root: Path) -> Path:
    """A flattened RSVQA-LR list (GeoChat-style ``category`` / ``ground_truth`` field names)."""
    write_image(root / "7.tif", size=(8, 8))
    entries = [
        {"question_id": 10, "image": "7.tif", "text": "Is a water area present?", "ground_truth": "yes",
         "category": "presence"},
        {"question_id": 11, "image": 7, "text": "Is it a rural or an urban area", "ground_truth": "urban",
         "category": "rural_urban"},
    ]
    return _dump(root / "rsvqa_lr_flat.json", entries)


def write_grounding_files(root: Path) -> dict:
    """One file per grounding layout: the authors' manifest (pixels), VRSBench referring (0-100), generic (0-1000)."""
    image = write_image(root / "imgs" / "scene.png", size=(200, 100))
    manifest = [{"dataset": "VRSBench-VG", "image_path": str(image), "sentence": "the red car",
                 "bbox": [20, 10, 60, 50], "image_width": 200, "image_height": 100}]
    referring = [{"image_id": "scene.png", "question": "the large ship on the left",
                  "ground_truth": "{<10><20><30><60>}", "dataset": "RSBench", "question_id": 5, "type": "ref",
                  "unique": True, "obj_cls": "ship", "size_group": "large"}]
    generic = [{"id": "g0", "image": "imgs/scene.png", "sentence": "a tennis court", "box": [100, 200, 500, 600]}]
    return {
        "manifest": _dump(root / "vg_manifest.json", manifest),
        "referring": _dump(root / "VRSBench_EVAL_referring.json", referring),
        "generic": _dump(root / "vg_generic.json", generic),
        "images": root / "imgs",
    }


def write_synthetic_benchmark(root: Path) -> Path:
    """The project's synthetic benchmark: LLaVA-style entries with question_type, answer and small_object."""
    write_image(root / "synthetic" / "img_000.png")
    write_image(root / "img_001.png")
    entries = [
        {"id": "s0", "image": "img_000.png", "source_dataset": "synthetic",
         "conversations": [{"from": "human", "value": "<image>\nHow many red squares are there?"},
                           {"from": "gpt", "value": "3"}],
         "question_type": "count", "answer": "3", "small_object": True},
        {"id": "s1", "image": "img_001.png",
         "conversations": [{"from": "human", "value": "What colour is the circle?\n<image>"},
                           {"from": "gpt", "value": "blue"}],
         "question_type": "color", "small_object": False},
    ]
    return _dump(root / "synthetic_test.json", entries)
