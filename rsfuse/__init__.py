"""rsfuse: MF-RSVLM (FUSE-RSVLM, arXiv 2512.24022) as standalone, typed PyTorch components."""

__version__ = "0.1.0"

__all__ = ["MFRSVLM", "MFRSVLMConfig", "MFRSVLMProcessor", "__version__"]

_LAZY = {
    "MFRSVLM": "rsfuse.model.mfrsvlm",
    "MFRSVLMConfig": "rsfuse.model.config",
    "MFRSVLMProcessor": "rsfuse.processor",
}


def __getattr__(name: str):
    """``rsfuse.MFRSVLM``, ``rsfuse.MFRSVLMConfig`` and ``rsfuse.MFRSVLMProcessor`` are imported on first use, so
    ``import rsfuse`` stays light."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rsfuse' has no attribute {name!r}")
