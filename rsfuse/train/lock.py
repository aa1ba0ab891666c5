"""An exclusive lock on a training run's ``output_dir``: two runs must never write the same folder.

`RunLock` takes an ``fcntl.flock`` on ``<output_dir>/.rsfuse-run.lock`` and writes the holder's pid and host into it.
The kernel drops a flock when its process dies (also on SIGKILL), so a lock file whose lock nobody holds is stale:
it is taken over, with a message naming the dead holder. A lock held by a live process is refused with
`RunLockedError` naming that pid. Under ``torchrun`` only rank 0 takes the lock (the recipe decides).
"""

import fcntl
import json
import os
import socket
import sys
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

LOCK_FILE = ".rsfuse-run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the lock of the output folder; the message names its pid."""


class RunLock:
    """``with RunLock(folder): ...`` or ``lock = RunLock(folder).acquire()`` … ``lock.release()``."""

    def __init__(self, folder: str | os.PathLike, *, kind: str = "training run") -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.path = self.folder / LOCK_FILE
        self._handle = None

    @staticmethod
    def _holder(text: str) -> dict:
        try:
            holder = json.loads(text)
            return holder if isinstance(holder, dict) else {}
        except ValueError:
            return {}

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = self._holder(handle.read())
            handle.close()
            pid = holder.get("pid", "unknown")
            host = f" on {holder['host']}" if holder.get("host") else ""
            raise RunLockedError(
                f"{self.folder}: output_dir is in use by another {self.kind} (pid {pid}{host}, lock {self.path}); "
                "wait for it to finish or choose another output_dir"
            ) from None
        handle.seek(0)
        previous = self._holder(handle.read())
        if previous.get("pid") not in (None, os.getpid()):
            print(f"[rsfuse] taking over the stale lock of {self.folder} (pid {previous['pid']} is no longer running)",
                  file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; an unlocked file is free for the next run)."""
        if self._handle is None:
            return
        try:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
