"""The command line's error path: an expected error (bad data, configuration, checkpoint, a busy output folder, a full
disk) is one line on stderr naming the file, sample or key and the reason, with exit status 2; the traceback is shown
only with ``--debug`` or ``RSFUSE_DEBUG=1``. Anything else is a bug and keeps its traceback."""

import os
import sys
import traceback
from typing import Sequence

__all__ = ["EXIT_EXPECTED", "debug_requested", "expected_errors", "one_line", "report_expected"]

EXIT_EXPECTED = 2
DEBUG_ENV = "RSFUSE_DEBUG"


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """``--debug`` among the arguments or ``RSFUSE_DEBUG=1`` in the environment."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that describe a bad input rather than a bug."""
    from rsfuse.checkpoints.io import CheckpointError
    from rsfuse.data.images import ImageLoadError
    from rsfuse.data.instructions import InstructionDataError
    from rsfuse.llm.templates import ConversationError
    from rsfuse.llm.tokenizer import TokenizerError
    from rsfuse.model.quantization import QuantizationError
    from rsfuse.recipes.config import ConfigError
    from rsfuse.train.checkpointing import CheckpointSaveError
    from rsfuse.train.lock import RunLockedError
    from rsfuse.train.state import CheckpointReadError

    return (ConfigError, InstructionDataError, ImageLoadError, CheckpointError, CheckpointSaveError, RunLockedError,
            ConversationError, CheckpointReadError, TokenizerError, QuantizationError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (an error re-raised from a DataLoader worker keeps only its last line)."""
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Original Traceback" in text and lines:
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") and ": " in last else last
    return " ".join(lines)


def report_expected(prog: str, error: BaseException, *, debug: bool, prefix: str = "") -> int:
    """Print ``prog: [prefix]message`` (after the traceback when ``debug``) and return `EXIT_EXPECTED`."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"{prog}: {prefix}{one_line(error)}", file=sys.stderr)
    return EXIT_EXPECTED
