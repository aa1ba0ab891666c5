"""The resumable record of a scene's tile answers: ``OUT/tiles.jsonl`` (``tiles.rank<r>.jsonl`` per process under
torchrun).

The first line is the run's identity (model, question, kind, prompt ids, raster content digest, bands, stretch, GSD,
tiling, decoding settings); every further line is one finished batch of tiles ``{"chunk": c, "records": [...]}``,
flushed and fsynced, so an interrupted run loses at most the batch it was answering and never half a batch (a torn
last line is ignored). A file written for another identity is never reused: the run refuses and names the fields
that differ (``overwrite=True`` starts afresh instead).
"""

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rsfuse.scene.reading import SceneError

__all__ = ["TileStore", "clear_store", "store_files"]


def store_files(folder: Path) -> list[Path]:
    """Every tile-answer file in ``folder`` (the single process's and each rank's)."""
    return sorted([*folder.glob("tiles.jsonl"), *folder.glob("tiles.rank*.jsonl")])


def _differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key))


def _read(path: Path, identity: Mapping[str, Any]) -> dict[int, list[dict]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    chunks: dict[int, list[dict]] = {}
    if not lines:
        return chunks
    try:
        header = json.loads(lines[0])["identity"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SceneError(f"{path}: not a scene tile-answer file (first line is no identity); "
                         f"use another output folder or overwrite") from None
    differing = _differences(header, identity)
    if differing:
        raise SceneError(f"{path}: answers of another run (differs in {', '.join(differing)}); "
                         f"use another output folder or overwrite")
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            chunks[int(entry["chunk"])] = list(entry["records"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn line of an interrupted write: that batch is answered again
    return chunks


def clear_store(folder: Path) -> None:
    """Remove the tile-answer files of ``folder`` (``overwrite``)."""
    for path in store_files(folder):
        path.unlink()


class TileStore:
    """Finished batches already in ``folder`` (`done`) and an appender for new ones (`write`)."""

    def __init__(self, folder: str | os.PathLike, identity: Mapping[str, Any], *, rank: int = 0,
                 world_size: int = 1) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / ("tiles.jsonl" if world_size == 1 else f"tiles.rank{rank}.jsonl")
        self.done: dict[int, list[dict]] = {}
        for path in store_files(self.folder):
            self.done.update(_read(path, self.identity))
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            with self.path.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
        self._handle = self.path.open("a", encoding="utf-8")
        if not fresh and torn:
            self._handle.write("\n")  # end the torn line, so the next batch starts a line of its own
        if fresh:
            self._append({"identity": self.identity})

    def _append(self, entry: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, chunk: int, records: Iterable[dict]) -> None:
        records = list(records)
        self._append({"chunk": chunk, "records": records})
        self.done[chunk] = records

    def close(self) -> None:
        self._handle.close()
