"""Tests written to kill mutants that survived ``tools/mutation.py`` (docs/MUTATION.md): each one fails on the named
mutant and passes on the real code. Grouped by the module whose mutant they kill."""

import pytest
import torch
from test_canvas import PatchMeanTower

from rsfuse.encoders import MultiScaleCanvas
from rsfuse.fusion import MLPProjector


# --------------------------------------------------------------------------------------------- fusion/projector.py
def test_projector_rejects_wider_features_and_non_int_sizes():
    projector = MLPProjector(4, 6)
    with pytest.raises(ValueError, match=r"expected features \[..., 4\], got \(2, 5\)"):
        projector(torch.randn(2, 5))  # `!=` → `<` would let wider features reach the Linear
    with pytest.raises(ValueError, match="in_dim must be a positive int, got 2.5"):
        MLPProjector(2.5, 6)  # `or not isinstance` → `and not isinstance` would accept a float
    wide = MLPProjector(300, 2)  # above CPython's small-int cache: `!=` → `is not` would reject the right width
    assert wide(torch.randn(1, 300)).shape == (1, 2)


# --------------------------------------------------------------------------------------------- encoders/canvas.py
def test_canvas_size_zero_is_named():
    tower = PatchMeanTower(patch_size=2, depth=6, width=3)
    with pytest.raises(ValueError, match="canvas_size 0 is not a positive multiple of the patch size 2"):
        MultiScaleCanvas(tower, canvas_size=0, base_window=16, layers=(2, 4))
