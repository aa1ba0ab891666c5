"""Fingerprints of what changes an evaluation's answers, stored on every line of ``predictions.jsonl``.

A run reuses stored answers only when its fingerprint equals theirs, field by field; otherwise it refuses and names
each field that differs (`rsfuse.eval.predictions.read_predictions`). The fields:

- ``weights``: the model folder. Small files (``*.json``, ``tokenizer.model``, ...) by content; weight files
  (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) by size and modification time (``stat``, instant for
  a 7B model) or by content (``content``: reads every byte). Either way a model replaced at the same path differs.
- ``tokenizer``: the tokenizer file's content when it comes from another folder.
- ``data``: the annotation file's content, or for a folder (class folders, a release folder) every file's relative
  path, size and modification time.
- ``images``: the content of every image the records name (one sha256 per image, in the records' order; a missing
  image counts as such), so overwriting images under the same names is a new run. Each image is hashed once: the
  digests are kept in a cache file (``.image_digests.json`` in the output folder) keyed by path, size and
  modification time, so a rerun only ``stat``s them.
- the generation and input settings: ``max_new_tokens``, ``template``, ``dtype``, ``decoding``, ``split``,
  ``image_root``.

Not in it, because they do not change an answer: ``batch_size`` (left padding gives the same greedy tokens),
``limit``, the number of processes, the output folder.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_DIGEST_CACHE",
    "WEIGHT_SUFFIXES",
    "data_digest",
    "file_digest",
    "folder_digest",
    "image_digests",
    "images_digest",
    "run_fingerprint",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CHUNK = 1 << 20
IMAGE_DIGEST_CACHE = ".image_digests.json"
CACHE_VERSION = 1


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


def _read_cache(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):  # no cache yet, or a torn / foreign file: hash again
        return {}
    if not isinstance(stored, dict) or stored.get("version") != CACHE_VERSION:
        return {}
    entries = stored.get("images")
    return entries if isinstance(entries, dict) else {}


def image_digests(paths: Iterable[str | os.PathLike], *, cache: str | os.PathLike | None = None) -> dict[str, str]:
    """``{resolved path: "sha256:<16 hex>" | "missing"}`` for each image; each file is read once and its digest kept
    in ``cache`` (a JSON file, rewritten atomically) under its path, size and modification time (ns), so an unchanged
    file is only ``stat``ed next time and a rewritten one (new size or mtime) is read again."""
    cache_path = Path(cache) if cache is not None else None
    known = _read_cache(cache_path)
    fresh: dict[str, list] = {}
    digests: dict[str, str] = {}
    for raw in paths:
        key = str(Path(raw).resolve())
        if key in digests:
            continue
        try:
            info = os.stat(key)
        except OSError:
            digests[key] = "missing"
            continue
        entry = known.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [info.st_size, info.st_mtime_ns]:
            digest = str(entry[2])
        else:
            try:
                digest = f"sha256:{file_digest(key)}"
            except OSError:
                digests[key] = "missing"
                continue
        digests[key] = digest
        fresh[key] = [info.st_size, info.st_mtime_ns, digest]
    if cache_path is not None and fresh and fresh != {key: known.get(key) for key in fresh}:
        merged = {**known, **fresh}
        temporary = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps({"version": CACHE_VERSION, "images": merged}))
            os.replace(temporary, cache_path)
        except OSError:  # a cache that cannot be written only costs a re-hash next time
            temporary.unlink(missing_ok=True)
    return digests


def images_digest(paths: Iterable[str | os.PathLike], *, cache: str | os.PathLike | None = None) -> str:
    """One digest over the images' content digests (`image_digests`), in the order given."""
    ordered = [str(Path(path).resolve()) for path in paths]
    digests = image_digests(ordered, cache=cache)
    digest = hashlib.sha256()
    for key in ordered:
        digest.update(f"{key}\0{digests[key]}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def run_fingerprint(
    *,
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    weights: str = "stat",
    settings: Mapping[str, Any] = (),
    images: Iterable[str | os.PathLike] | None = None,
    image_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The fingerprint of an evaluation run (see the module docstring); ``settings`` adds the generation/input
    settings as they are (JSON values); ``images`` (the records' image files) adds their content digest, with
    per-image digests cached in ``image_cache``."""
    if weights not in ("stat", "content"):
        raise ValueError(f"weights fingerprint mode must be 'stat' or 'content', got {weights!r}")
    model_dir = Path(model_dir)
    fingerprint: dict[str, Any] = {
        "weights": f"{weights}:{folder_digest(model_dir, content=weights == 'content', stat_suffixes=WEIGHT_SUFFIXES)}",
    }
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != model_dir.resolve():
        fingerprint["tokenizer"] = f"sha256:{file_digest(Path(tokenizer_dir) / 'tokenizer.model')}"
    fingerprint["data"] = data_digest(data)
    if images is not None:
        fingerprint["images"] = images_digest(images, cache=image_cache)
    fingerprint.update(dict(settings))
    return fingerprint
