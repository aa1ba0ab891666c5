"""Typed-tensor shorthands and the ``typecheck`` decorator.

``typecheck`` wraps a function with ``jaxtyping.jaxtyped(typechecker=beartype)`` when the environment variable
``RSFUSE_TYPECHECK`` is set to ``1`` (tests and CI set it), and is the identity otherwise, so run time pays nothing.
The variable is read once, when this module is first imported.
"""

import functools
import os
from typing import Callable, TypeVar

import torch
from jaxtyping import Bool, Float, Int, Shaped, UInt8, jaxtyped
from torch import Tensor

__all__ = ["Bool", "Float", "Int", "Shaped", "Tensor", "TYPECHECK", "UInt8", "typecheck"]

TYPECHECK: bool = os.environ.get("RSFUSE_TYPECHECK", "0").strip().lower() in {"1", "true", "yes", "on"}

F = TypeVar("F", bound=Callable)


def typecheck(fn: F) -> F:
    """Check jaxtyping shape annotations of ``fn`` at call time when ``RSFUSE_TYPECHECK=1``. Inside a region that
    ``torch.compile`` traces, the check is skipped (it would break the graph): compiled code is the unchecked code."""
    if not TYPECHECK:
        return fn
    from beartype import beartype  # noqa: PLC0415  (only needed when checking: run time does not import it)

    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def check_unless_compiling(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return check_unless_compiling  # type: ignore[return-value]
