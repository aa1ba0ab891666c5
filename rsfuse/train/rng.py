"""Capture and restore every random-number generator a training step touches.

`capture_rng_state()` returns a dict of tensors and plain Python values (loadable with ``torch.load(weights_only=True)``):
Python's ``random``, NumPy's legacy global generator, torch's CPU generator and, when CUDA is initialised, every CUDA
device generator. `restore_rng_state(state)` puts them all back, so dropout masks and sampling after a resume are the
ones an uninterrupted run would have drawn.
"""

import random

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """The state of every generator, as tensors, lists and numbers (no NumPy objects, so ``weights_only`` loads it)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore generators captured by `capture_rng_state`; raises ``KeyError`` naming a missing entry."""
    for key in ("python", "numpy", "torch_cpu"):
        if key not in state:
            raise KeyError(f"RNG state is missing the {key!r} entry")
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(
                f"RNG state holds {len(cuda_states)} CUDA generators but {torch.cuda.device_count()} devices are visible"
            )
        torch.cuda.set_rng_state_all(cuda_states)
