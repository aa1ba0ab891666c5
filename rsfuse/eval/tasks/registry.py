"""Evaluation tasks as objects: how a benchmark's records are read, which protocols can score them, and the scorer.

An `EvalTask` ties a reader (files -> records) to its scorer (records with ``prediction`` -> metrics naming their
protocol). The built-in tasks are registered in ``rsfuse.eval.tasks``, except those defined beside their benchmark in a
package built on ``rsfuse.eval`` (``TASK_MODULES``: the synthetic benchmark's), which are imported and registered the
first time the registry is read (`load_task_modules`), so that importing ``rsfuse.eval`` never imports them.
`register_task` adds one (a new benchmark needs no change to the recipe), `get_task` looks one up by name with an
error that lists the known names.
"""

import importlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EvalTask", "TASKS", "TASK_MODULES", "get_task", "load_task_modules", "register_task", "task_protocols"]

# reader(data, image_root or None, split, check_images) -> records
Reader = Callable[[Path, "Path | None", str, bool], list[dict]]
# scorer(records with "prediction", protocol) -> metrics dict carrying "protocol"
Scorer = Callable[[Sequence[Mapping[str, Any]], str], dict]


@dataclass(frozen=True)
class EvalTask:
    """One benchmark. ``protocols[0]`` is the default; ``"auto"`` among them is resolved by ``auto_protocol()``."""

    name: str
    summary: str
    protocols: tuple[str, ...]
    reader: Reader
    scorer: Scorer
    auto_protocol: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if not self.protocols:
            raise ValueError(f"task {self.name!r}: needs at least one protocol")
        if "auto" in self.protocols and self.auto_protocol is None:
            raise ValueError(f"task {self.name!r}: protocol 'auto' needs an auto_protocol resolver")

    def read(self, data: str | os.PathLike, image_root: str | os.PathLike | None = None, *, split: str = "test",
             check_images: bool = True) -> list[dict]:
        """Records (``id``, ``image_path``, ``prompt`` and the task's answer fields) from ``data``."""
        return self.reader(Path(data), Path(image_root) if image_root else None, split, check_images)

    def resolve_protocol(self, protocol: str | None = None) -> str:
        """``protocol`` checked against the task's (None = the default), with ``auto`` resolved."""
        protocol = protocol or self.protocols[0]
        if protocol not in self.protocols:
            raise ValueError(f"task {self.name!r} has no protocol {protocol!r} "
                             f"(choose from {', '.join(self.protocols)})")
        if protocol == "auto":
            protocol = self.auto_protocol()
        return protocol

    def score(self, records: Sequence[Mapping[str, Any]], protocol: str | None = None) -> dict:
        """The scorer's metrics for records carrying ``prediction``; the result names its ``protocol``."""
        return self.scorer(records, self.resolve_protocol(protocol))


TASKS: dict[str, EvalTask] = {}

TASK_MODULES: tuple[str, ...] = ("rsfuse.synthetic.task:SYNTHETIC_TASK",)
"""Built-in tasks kept with their benchmark, as ``module:attribute``; registered by `load_task_modules`."""
_unloaded = list(TASK_MODULES)


def load_task_modules() -> dict[str, EvalTask]:
    """Import and register the ``TASK_MODULES`` tasks not registered yet (a name registered already is kept);
    returns ``TASKS``."""
    while _unloaded:
        module, attribute = _unloaded.pop(0).split(":")
        task = getattr(importlib.import_module(module), attribute)
        TASKS.setdefault(task.name, task)
    return TASKS


def register_task(task: EvalTask, *, replace: bool = False) -> EvalTask:
    """Add ``task`` under ``task.name``; an existing name is refused unless ``replace``."""
    if task.name in TASKS and not replace:
        raise ValueError(f"an evaluation task named {task.name!r} is registered already (pass replace=True)")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> EvalTask:
    """The registered task ``name``; a KeyError listing the known names otherwise."""
    load_task_modules()
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation task {name!r} (known: {', '.join(TASKS)})") from None


class _Protocols(Mapping):
    """Read-only live view: task name -> its protocols."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return load_task_modules()[name].protocols

    def __iter__(self) -> Iterator[str]:
        return iter(load_task_modules())

    def __len__(self) -> int:
        return len(load_task_modules())

    def __repr__(self) -> str:
        return repr(dict(self))


task_protocols: Mapping[str, tuple[str, ...]] = _Protocols()
