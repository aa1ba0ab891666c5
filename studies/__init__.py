"""Studies and diagnostics of rsfuse (run from the repository root, e.g. ``python -m studies.ablate_synthetic``).
They import public rsfuse names only; their reports live in ``docs/ablations/``."""
