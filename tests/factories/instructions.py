"""A tiny LLaVA/VHM instruction set on disk: ``data.json`` + PNG images (some under ``source_dataset`` sub-folders,
one found by the root fallback, some samples text-only)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["TINY_RECORDS", "write_tiny_instructions", "write_png"]

TINY_RECORDS: list[dict] = [
    {
        "id": "airport-1",
        "image": "airport.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"},
            {"from": "gpt", "value": "An airport with three planes."},
            {"from": "human", "value": "How many planes?"},
            {"from": "gpt", "value": "3"},
        ],
    },
    {
        "id": "harbour-7",
        "image": "harbour.png",
        "source_dataset": "dota",
        "conversations": [
            {"from": "human", "value": "{VQA} How many ships are in the harbour?\n<image>"},
            {"from": "gpt", "value": "There are 12 ships."},
        ],
    },
    {
        "id": "text-1",
        "conversations": [
            {"from": "human", "value": "{CLS} Classify the scene: airport, beach, forest."},
            {"from": "gpt", "value": "forest"},
        ],
    },
    {
        "id": "river-2",
        "image": "river.png",
        "source_dataset": "rsvqa",
        "conversations": [
            {"from": "human", "value": "<image>\n{VG} Locate the bridge."},
            {"from": "gpt", "value": "[[120, 340, 260, 480]]"},
        ],
    },
    {
        "id": "text-2",
        "conversations": [
            {"from": "human", "value": "Describe a dense residential area."},
            {"from": "gpt", "value": "Many buildings, trees and a small park in the centre."},
        ],
    },
]

_IMAGES = {  # relative path -> (width, height, RGB colour)
    "airport.png": (40, 24, (200, 30, 30)),
    "dota/harbour.png": (24, 36, (30, 200, 30)),
    "river.png": (32, 32, (30, 30, 200)),  # record says source_dataset "rsvqa": found by the root fallback
}


def write_png(path: Path, width: int, height: int, colour: tuple[int, int, int]) -> Path:
    """A solid-colour RGB PNG with a lighter diagonal, so resizing is visible."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:] = colour
    diagonal = np.arange(min(width, height))
    array[diagonal, diagonal] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path)
    return path


def write_tiny_instructions(folder: Path, records: list[dict] | None = None) -> tuple[Path, Path]:
    """Write ``folder/data.json`` and ``folder/images/...``; returns ``(json_path, image_root)``."""
    folder = Path(folder)
    image_root = folder / "images"
    for relative, (width, height, colour) in _IMAGES.items():
        write_png(image_root / relative, width, height, colour)
    json_path = folder / "data.json"
    json_path.write_text(json.dumps(TINY_RECORDS if records is None else records, indent=1))
    return json_path, image_root
