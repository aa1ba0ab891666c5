"""Test-wide settings: shape checking on, deterministic CPU threads, hypothesis profile for a 2-core machine."""

import os

os.environ.setdefault("RSFUSE_TYPECHECK", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "rsfuse",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("rsfuse")
