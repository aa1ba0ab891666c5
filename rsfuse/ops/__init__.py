"""Low-level operations shared by every component."""

from rsfuse.ops.attention import attention, xformers_available

__all__ = ["attention", "xformers_available"]
