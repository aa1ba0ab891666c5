"""Fingerprints of what changes an evaluation's answers, stored on every line of ``predictions.jsonl``.

A run reuses stored answers only when its fingerprint equals theirs, field by field; otherwise it refuses and names
each field that differs (`rsfuse.eval.predictions.read_predictions`). The fields:

- ``weights``: the model folder. Small files (``*.json``, ``tokenizer.model``, ...) by content; weight files
  (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) by size and modification time (``stat``, instant for
  a 7B model) or by content (``content``: reads every byte). Either way a model replaced at the same path differs.
- ``tokenizer``: the tokenizer file's content when it comes from another folder.
- ``data``: the annotation file's content, or for a folder (class folders, a release folder) every file's relative
  path, size and modification time.
- the generation and input settings: ``max_new_tokens``, ``template``, ``dtype``, ``decoding``, ``split``,
  ``image_root``.

Not in it, because they do not change an answer: ``batch_size`` (left padding gives the same greedy tokens),
``limit``, the number of processes, the output folder.
"""

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_SUFFIXES", "data_digest", "file_digest", "folder_digest", "run_fingerprint"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex, 16 characters)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def folder_digest(folder: str | os.PathLike, *, content: bool = False, stat_suffixes: tuple[str, ...] = ()) -> str:
    """Digest of a folder's files (hidden ones excluded): relative path plus content, or size and modification time
    for files ending in ``stat_suffixes`` (all files when ``stat_suffixes`` is empty and not ``content``)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        by_stat = not content and (not stat_suffixes or path.name.endswith(stat_suffixes))
        if by_stat:
            info = path.stat()
            digest.update(f"{info.st_size}:{info.st_mtime_ns}".encode())
        else:
            digest.update(file_digest(path).encode())
    return digest.hexdigest()[:16]


def data_digest(data: str | os.PathLike) -> str:
    """The annotation file's content, or a folder's file listing with sizes and modification times."""
    data = Path(data)
    if data.is_dir():
        return f"listing:{folder_digest(data)}"
    return f"sha256:{file_digest(data)}"


def run_fingerprint(
    *,
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    weights: str = "stat",
    settings: Mapping[str, Any] = (),
) -> dict[str, Any]:
    """The fingerprint of an evaluation run (see the module docstring); ``settings`` adds the generation/input
    settings as they are (JSON values)."""
    if weights not in ("stat", "content"):
        raise ValueError(f"weights fingerprint mode must be 'stat' or 'content', got {weights!r}")
    model_dir = Path(model_dir)
    fingerprint: dict[str, Any] = {
        "weights": f"{weights}:{folder_digest(model_dir, content=weights == 'content', stat_suffixes=WEIGHT_SUFFIXES)}",
    }
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != model_dir.resolve():
        fingerprint["tokenizer"] = f"sha256:{file_digest(Path(tokenizer_dir) / 'tokenizer.model')}"
    fingerprint["data"] = data_digest(data)
    fingerprint.update(dict(settings))
    return fingerprint
