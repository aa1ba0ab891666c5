"""Recipes: the configuration loader (`rsfuse.recipes.config`), the training recipe (`rsfuse.recipes.train`, its
sections in `rsfuse.recipes.train_args`), the evaluation recipe (`rsfuse.recipes.evaluate`) and the command line's
error path (`rsfuse.recipes.errors`)."""

from rsfuse.recipes.config import ConfigError

__all__ = ["ConfigError"]
