"""What the study command lines share: finding a synthetic benchmark's test file and emitting a result as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["benchmark_test_file", "emit_json"]


def benchmark_test_file(prog: str, data: Path) -> Path | None:
    """``data/test.json``; None after one line on stderr naming the missing file (the caller exits 2)."""
    test = data / "test.json"
    if not test.is_file():
        print(f"{prog}: {test} not found (--data must be a synthetic benchmark folder)", file=sys.stderr)
        return None
    return test


def emit_json(result: dict, out: str | None) -> None:
    """Print ``result`` as indented JSON and, when ``out`` is given, write the same text there."""
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
