"""rsfuse: MF-RSVLM (FUSE-RSVLM, arXiv 2512.24022) as standalone, typed PyTorch components."""

__version__ = "0.1.0"
