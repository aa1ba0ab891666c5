"""The processor's settings: those implied by an ``MFRSVLMConfig`` (`settings_from_config`), the config a model folder
describes read from its config files alone (`model_config`: rsfuse, released MF-RSVLM, transformers' LLaVA, through
the registry of checkpoint formats ``rsfuse.checkpoints.formats`` that ``MFRSVLM.from_pretrained`` uses), and the
names of the files ``from_pretrained`` / ``save_pretrained`` use."""

import json
from pathlib import Path
from typing import Any

__all__ = [
    "PROCESSOR_CONFIG_FILE",
    "PREPROCESSOR_CONFIG_FILE",
    "PROCESSOR_CLASS",
    "SETTINGS",
    "settings_from_config",
    "model_config",
    "read_json_object",
]

PROCESSOR_CONFIG_FILE = "processor_config.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CLASS = "MFRSVLMProcessor"
SETTINGS = (
    "image_size", "image_mean", "image_std", "num_visual_tokens", "image_token_index", "image_placement",
    "pad_token_id", "eos_token_id", "max_length", "template",
)


def settings_from_config(config: Any) -> dict[str, Any]:
    """Processor settings implied by an ``MFRSVLMConfig``."""
    return {
        "image_size": config.input_size,
        "num_visual_tokens": config.num_visual_tokens,
        "image_token_index": config.image_token_index,
        "image_placement": config.image_placement,
        "pad_token_id": config.llm.pad_id,
        "eos_token_id": list(config.llm.eos_token_ids),
        "max_length": config.llm.max_position_embeddings,
    }


def model_config(folder: Path) -> Any:
    """The ``MFRSVLMConfig`` a model folder describes, from its config files only (no weight is read): the format is
    the one ``MFRSVLM.from_pretrained`` reads it as (``rsfuse.checkpoints.formats``, chosen by ``model_type``)."""
    from rsfuse.checkpoints.formats import read_model_config  # noqa: PLC0415
    from rsfuse.checkpoints.io import CheckpointError  # noqa: PLC0415
    from rsfuse.model.config import MFRSVLMConfig  # noqa: PLC0415

    data = read_model_config(folder)
    try:
        return MFRSVLMConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
