"""Helpers shared by the task readers: JSON reading with clear errors, image path resolution."""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "read_json_file", "require", "resolve_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def read_json_file(path: str | os.PathLike) -> Any:
    """Parse a JSON file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def require(entry: Mapping[str, Any], key: str, *, source: Path, index: int) -> Any:
    """``entry[key]``, or a ``KeyError`` (missing) / ``ValueError`` (null) naming the file, the entry index and the
    key."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: entry {index} is a {type(entry).__name__}, expected an object")
    if key not in entry:
        raise KeyError(f"{source}: entry {index} has no '{key}' field (fields: {sorted(entry)})")
    if entry[key] is None:  # never scored or read as the text "None"
        raise ValueError(f"{source}: entry {index} has '{key}': null (a bad record: give it a value or remove it)")
    return entry[key]


def resolve_image(root: Path, name: str, *, check: bool, source: Path) -> Path:
    """``root / name`` (absolute names are kept); with ``check`` a missing file raises naming the annotation file."""
    path = Path(name) if os.path.isabs(name) else root / name
    if check and not path.is_file():
        raise FileNotFoundError(f"{source}: image {path} not found")
    return path
