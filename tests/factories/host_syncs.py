"""Counting the ways a run reads a tensor's value back to the host (on a GPU each is a synchronisation)."""

import torch

SYNC_METHODS = ("item", "tolist", "cpu", "__bool__")


def count_host_syncs(monkeypatch) -> list[str]:
    """Record every ``Tensor.item`` / ``tolist`` / ``cpu`` / ``__bool__`` call from now on (until the test ends)."""
    calls: list[str] = []
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls
