"""Atomic, crash-safe training checkpoints under ``<output_dir>/checkpoints/step_N/``.

A checkpoint is written into a hidden temporary folder (``.tmp-step_N``), every file and the folder are fsynced, a
``COMPLETE`` marker is written last, and only then is the folder renamed to ``step_N`` (one atomic ``rename``). A process
killed at any moment therefore leaves either the previous checkpoints untouched plus a stale temporary folder (ignored
and removed by the next save), or a new complete checkpoint. `find_latest_checkpoint` only ever returns folders that
carry the marker. `prune_checkpoints` keeps the newest ``keep_last``.

Under several processes every rank writes its share into the same temporary folder (the caller passes a `barrier`), and
rank 0 alone seals and renames it.

A failed save (any exception while writing or sealing, e.g. a full disk) removes its temporary folder and leaves the
earlier checkpoints as they were; a full disk (``ENOSPC``, or a writer's own error saying so: `is_disk_full`), from
the first write on, is re-raised as `CheckpointSaveError` ("no space left on <folder>", naming the last complete
checkpoint kept).

Test hook: when the environment variable ``RSFUSE_CHECKPOINT_SAVE_DELAY`` holds ``SECONDS`` (every save) or
``STEP:SECONDS`` (only the save of that step), `save_checkpoint` sleeps that long after the files are written and
before the folder is sealed, so a test can kill a run mid-save.
"""

import errno
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointSaveError",
    "checkpoint_step",
    "find_latest_checkpoint",
    "fsync_tree",
    "is_disk_full",
    "list_checkpoints",
    "prune_checkpoints",
    "save_checkpoint",
]

COMPLETE_MARKER = "COMPLETE"
SAVE_DELAY_ENV = "RSFUSE_CHECKPOINT_SAVE_DELAY"
_STEP_NAME = re.compile(r"^step_(\d+)$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (no space left); the partial folder is gone, earlier checkpoints are kept."""

    def __str__(self) -> str:
        return str(self.strerror)


NO_SPACE_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
LOW_SPACE_BYTES = 64 << 20


def is_disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``error`` (or an error it was raised from) says the disk of ``folder`` is full: ``ENOSPC`` /
    ``EDQUOT``, the text of a writer that hides the errno (safetensors: "StorageFull", "No space left on device"),
    or torch's "file write failed" while less than 64 MiB are free there."""
    chain, current = [], error
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(item).lower()
        if any(marker in text for marker in NO_SPACE_TEXT):
            return True
    if any("file write failed" in str(item).lower() for item in chain):
        path = Path(folder)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free < LOW_SPACE_BYTES
        except OSError:
            return False
    return False


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The step number of a ``step_N`` folder; raises ``ValueError`` naming the folder otherwise."""
    match = _STEP_NAME.match(Path(folder).name)
    if match is None:
        raise ValueError(f"{folder}: not a checkpoint folder (expected a name like step_120)")
    return int(match.group(1))


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (inclusive), deepest first."""
    folder = Path(folder)
    for root, directories, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (folders ``step_N`` holding the marker), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.is_dir() and _STEP_NAME.match(path.name) and (path / COMPLETE_MARKER).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None; temporary folders of interrupted saves are ignored."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (``keep_last <= 0`` keeps all); returns the deleted."""
    if keep_last <= 0:
        return []
    doomed = list_checkpoints(root)[:-keep_last]
    for path in doomed:
        trash = path.with_name(f"{_TRASH_PREFIX}{path.name}")
        os.replace(path, trash)
        shutil.rmtree(trash)
    return doomed


def _save_delay(step: int) -> float:
    text = os.environ.get(SAVE_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        if ":" in text:
            only_step, seconds = text.split(":", 1)
            return float(seconds) if int(only_step) == step else 0.0
        return float(text)
    except ValueError:
        raise ValueError(f"{SAVE_DELAY_ENV}={text!r}: expected SECONDS or STEP:SECONDS") from None


def _remove_stale(root: Path) -> None:
    for path in root.iterdir():
        if path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    write: Callable[[Path], None],
    *,
    keep_last: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and return its final folder ``root/step_N``.

    ``write(folder)`` fills the temporary folder (every rank calls it when ``barrier`` is given). The main rank then
    fsyncs, writes the ``COMPLETE`` marker, renames the folder into place (replacing an older ``step_N``), fsyncs ``root``
    and prunes to ``keep_last``.
    """
    root = Path(root)
    final = root / f"step_{step}"
    temporary = root / f"{_TEMP_PREFIX}{final.name}"
    sync = barrier or (lambda: None)
    try:
        if is_main:
            root.mkdir(parents=True, exist_ok=True)
            _remove_stale(root)
            temporary.mkdir()
        sync()
        write(temporary)
        sync()
        if is_main:
            delay = _save_delay(step)
            if delay > 0:
                time.sleep(delay)
            fsync_tree(temporary)
            (temporary / COMPLETE_MARKER).write_text(f"step {step}\n")
            _fsync_path(temporary / COMPLETE_MARKER)
            _fsync_path(temporary)
    except BaseException as error:
        if is_main:
            shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, Exception) and is_disk_full(error, root):
            kept = find_latest_checkpoint(root)
            kept_text = f"the last complete checkpoint {kept} is kept" if kept else "no earlier checkpoint exists"
            raise CheckpointSaveError(
                errno.ENOSPC,
                f"no space left on {root} while writing checkpoint {final.name}; the partial folder was removed, "
                f"{kept_text}",
            ) from error
        raise
    if is_main:
        if final.exists():
            trash = root / f"{_TRASH_PREFIX}{final.name}"
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(temporary, final)
        _fsync_path(root)
        prune_checkpoints(root, keep_last)
    sync()
    return final
