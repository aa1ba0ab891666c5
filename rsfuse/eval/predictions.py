"""The predictions file of an evaluation run: ``predictions.jsonl``, one JSON object per answered record.

Every line carries the run's identity (task, model, data and the fingerprint of everything that changes an answer,
`rsfuse.eval.fingerprint`) next to ``id`` and ``prediction``, so a file can be checked line by line against the run
that wants to reuse it; a mismatch names every differing field. Writers append and flush each batch (a killed run
loses at most the batch in flight); a last line without its newline (a kill mid-write) is dropped when the file is read.

Several processes (``torchrun``) never write one file: process ``r`` appends to ``predictions.rank{r}.jsonl`` and
`consolidate` folds every rank file into ``predictions.jsonl`` (records in their original order, each id once) and
deletes the rank files. It runs before a run starts (so a resumed run sees the work of an interrupted sharded one,
whatever its number of processes) and after the last batch.
"""

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "mismatch_reason",
    "PREDICTIONS_FILE",
    "differences",
    "PredictionsMismatchError",
    "PredictionsFileError",
    "PredictionWriter",
    "consolidate",
    "rank_file",
    "rank_files",
    "read_predictions",
]

PREDICTIONS_FILE = "predictions.jsonl"


class PredictionsMismatchError(ValueError):
    """An existing predictions file was written by a run that would answer differently (another task, model, data
    file or setting); the message names the file and every field that differs."""


class PredictionsFileError(PredictionsMismatchError):
    """An existing predictions file cannot be resumed because a line inside it is damaged (torn, edited, not
    UTF-8); the message names the file, the line and the way out."""


def rank_file(path: str | os.PathLike, rank: int) -> Path:
    """``predictions.rank{rank}.jsonl`` beside ``path`` (the file process ``rank`` appends to under torchrun)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_files(path: str | os.PathLike) -> list[Path]:
    """Every rank file beside ``path``, whatever the world size that wrote them, in rank order."""
    path = Path(path)
    found = []
    for candidate in path.parent.glob(f"{path.stem}.rank*{path.suffix}"):
        rank = candidate.name[len(path.stem) + len(".rank"): -len(path.suffix) or None]
        if rank.isdigit():
            found.append((int(rank), candidate))
    return [candidate for _, candidate in sorted(found)]


def _whole_lines(path: Path, *, repair: bool) -> list[str]:
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw) and repair:
        with path.open("r+b") as handle:
            handle.truncate(keep)
    try:
        return raw[:keep].decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PredictionsFileError(f"{path}: line {line} is not UTF-8 text; delete that line (or the file) or use "
                                   "another output_dir") from None


MISSING = "<not recorded>"


def differences(stored: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"field stored (this run: expected)"`` for each field of ``expected`` that ``stored`` does not match; nested
    mappings (the fingerprint) are compared field by field, and a field only one side has counts as a difference."""
    found = []
    for field in [*expected, *(key for key in stored if prefix and key not in expected)]:
        have, want = stored.get(field, MISSING), expected.get(field, MISSING)
        if isinstance(have, Mapping) and isinstance(want, Mapping):
            found += differences(have, want, f"{prefix}{field}.")
        elif have is MISSING and isinstance(want, Mapping):
            found.append(f"{prefix}{field} {MISSING} (a file from before {field}s were recorded)")
        elif have != want:
            shown = [value if value is MISSING else repr(value) for value in (have, want)]
            found.append(f"{prefix}{field} {shown[0]} (this run: {shown[1]})")
    return found


def read_predictions(path: str | os.PathLike, identity: Mapping[str, Any], *, repair: bool = True) -> dict[str, str]:
    """id -> prediction from an existing predictions (or rank) file; {} when there is none.

    Every line must carry ``identity`` (field by field); otherwise `PredictionsMismatchError` names the file, the line
    and each differing field. A torn last line is dropped (and, with ``repair``, cut from the file). The first line of
    an id wins.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    predictions: dict[str, str] = {}
    for number, line in enumerate(_whole_lines(path, repair=repair), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise PredictionsFileError(f"{path}: line {number} is not valid JSON ({error}; a torn or edited line "
                                       "inside the file); delete that line (or the file) or use another "
                                       "output_dir") from None
        if not isinstance(entry, dict) or "id" not in entry or "prediction" not in entry:
            raise PredictionsFileError(f"{path}: line {number} is not an object with 'id' and 'prediction'; delete "
                                       "that line (or the file) or use another output_dir")
        differing = differences(entry, identity)
        if differing:
            raise PredictionsMismatchError(
                f"{path}: line {number} was written by a run that answers differently: {'; '.join(differing)}; "
                "use another output_dir or delete the file"
            )
        predictions.setdefault(str(entry["id"]), str(entry["prediction"]))
    return predictions


def _line(identity: Mapping[str, Any], identifier: str, prediction: str) -> str:
    return json.dumps({**identity, "id": identifier, "prediction": prediction}) + "\n"


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def consolidate(path: str | os.PathLike, identity: Mapping[str, Any], order: Sequence[str] = ()) -> dict[str, str]:
    """Fold the rank files into ``path`` and return id -> prediction of everything answered so far.

    The file is rewritten (atomically) when rank files exist or ``order`` differs from the file's order: ids of
    ``order`` first in that order, then any other ids in the order they were found (answers to records outside this
    run, e.g. after a smaller ``limit``, are kept). Each id appears once. The rank files are deleted afterwards.
    Call it from one process only.
    """
    path = Path(path)
    done = read_predictions(path, identity)
    in_file = list(done)
    extra = rank_files(path)
    for source in extra:
        for identifier, prediction in read_predictions(source, identity).items():
            done.setdefault(identifier, prediction)
    wanted = [identifier for identifier in order if identifier in done]
    wanted_set = set(wanted)
    ordered = wanted + [identifier for identifier in done if identifier not in wanted_set]
    if extra or ordered != in_file:
        _write_atomic(path, (_line(identity, identifier, done[identifier]) for identifier in ordered))
    for source in extra:
        source.unlink()
    return {identifier: done[identifier] for identifier in ordered}


class PredictionWriter:
    """Append ``(id, prediction)`` lines with the run's identity; each `write` is flushed and fsynced."""

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, answers: Iterable[tuple[str, str]]) -> None:
        self._handle.writelines(_line(self.identity, identifier, prediction) for identifier, prediction in answers)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def mismatch_reason(path: Path, identity: Mapping[str, Any]) -> str | None:
    """Why ``path`` or its rank files cannot be reused (answers of a run that answers differently), or None.
    Read only; `evaluate` repairs and merges them later."""
    try:
        for source in (path, *rank_files(path)):
            read_predictions(source, identity, repair=False)
    except PredictionsMismatchError as error:
        return str(error)
    return None
