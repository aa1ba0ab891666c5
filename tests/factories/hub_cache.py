"""A Hugging Face Hub cache on disk, in the Hub's own layout, for tests that cannot reach a hub:
``CACHE/models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<branch>}``."""

import hashlib
import os
import shutil
from pathlib import Path


def commit_hash(text: str) -> str:
    """A 40-hex commit id derived from ``text`` (stable across runs)."""
    return hashlib.sha1(text.encode()).hexdigest()


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, *, revision: str = "main", commit: str | None = None) -> Path:
    """Copy every file of ``folder`` into ``cache`` as the snapshot of ``repo_id`` at ``commit`` (default: derived
    from the id and the revision), with ``refs/<revision>`` naming it; returns the snapshot folder."""
    commit = commit or commit_hash(f"{repo_id}@{revision}")
    storage = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for source in sorted(path for path in Path(folder).rglob("*") if path.is_file()):
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = storage / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(source, blob)
        target = snapshot / source.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot
