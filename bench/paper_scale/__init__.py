"""The pieces of ``bench/gpu_paper_scale.py`` (one GPU session's benchmark), one concept per module."""
