"""``rsfuse._typing.typecheck``: shapes checked at call time when RSFUSE_TYPECHECK=1 (the tests set it), skipped
inside a region ``torch.compile`` traces, so that compiled code has one graph with or without the checks."""

import pytest
import torch

from rsfuse._typing import TYPECHECK, Float, Tensor, typecheck


@typecheck
def _add(x: Float[Tensor, "n d"], y: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return x + y


def test_shapes_are_checked_when_enabled():
    assert TYPECHECK  # tests/conftest.py sets RSFUSE_TYPECHECK=1 before rsfuse is imported
    assert torch.equal(_add(torch.ones(2, 3), torch.ones(2, 3)), torch.full((2, 3), 2.0))
    with pytest.raises(Exception, match="_add"):
        _add(torch.ones(2, 3), torch.ones(3, 3))
    with pytest.raises(Exception, match="_add"):
        _add(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64))


def test_compiled_code_skips_the_check_in_one_graph():
    compiled = torch.compile(_add, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    assert torch.equal(compiled(torch.ones(2, 3), torch.ones(2, 3)), torch.full((2, 3), 2.0))
