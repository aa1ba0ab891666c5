"""The user's view of an error: one line on stderr, and the ``rsfuse`` console script run in a subprocess."""

import subprocess
import sys

from factories.train_run import REPO, child_env


def one_line(text: str) -> str:
    """The only non-blank line of ``text`` (asserted), which must not be a traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def run_rsfuse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m rsfuse ARGS`` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "rsfuse", *args], capture_output=True, text=True, timeout=120,
                          env=env or child_env(), cwd=REPO)
