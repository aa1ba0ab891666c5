"""Training recipes: ``rsfuse.recipes.train.main(argv)`` (``rsfuse train``) and its configuration system."""

from rsfuse.recipes.config import ConfigError, RecipeConfig, load_config, parse_args

__all__ = ["ConfigError", "RecipeConfig", "load_config", "parse_args"]
