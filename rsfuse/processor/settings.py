"""The processor's settings: those implied by an ``MFRSVLMConfig`` (`settings_from_config`), the config a model folder
describes read from its config files alone (`model_config`: rsfuse, released MF-RSVLM, transformers' LLaVA), and the
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


def _pad_id(llm: Any) -> int:
    """``MFRSVLM.pad_token_id``'s rule: the config's pad id, else its (first) EOS, else 0."""
    pad = llm.pad_token_id
    if pad is None:
        eos = llm.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return int(pad)


def settings_from_config(config: Any) -> dict[str, Any]:
    """Processor settings implied by an ``MFRSVLMConfig``."""
    eos = config.llm.eos_token_id
    return {
        "image_size": config.input_size,
        "num_visual_tokens": config.num_visual_tokens,
        "image_token_index": config.image_token_index,
        "image_placement": config.image_placement,
        "pad_token_id": _pad_id(config.llm),
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else eos,
        "max_length": config.llm.max_position_embeddings,
    }


def model_config(folder: Path) -> Any:
    """The ``MFRSVLMConfig`` a model folder describes, from its config files only (no weight is read)."""
    from rsfuse.checkpoints.clip import read_clip_vision_config  # noqa: PLC0415
    from rsfuse.checkpoints.io import CheckpointError, read_json  # noqa: PLC0415
    from rsfuse.checkpoints.llava_hf import is_llava_hf_config, read_llava_hf_config  # noqa: PLC0415
    from rsfuse.checkpoints.mfrsvlm import RELEASED_MODEL_TYPES, VISION_SUBFOLDER, released_config  # noqa: PLC0415
    from rsfuse.checkpoints.rsfuse_folder import RSFUSE_MODEL_TYPE  # noqa: PLC0415
    from rsfuse.model.config import MFRSVLMConfig  # noqa: PLC0415

    path = folder / "config.json"
    data = read_json(path)
    model_type = data.get("model_type")
    try:
        if model_type == RSFUSE_MODEL_TYPE:
            skip = ("model_type", "architectures", "torch_dtype")
            return MFRSVLMConfig.from_dict({key: value for key, value in data.items() if key not in skip})
        if model_type in RELEASED_MODEL_TYPES:
            vision = read_clip_vision_config(folder / VISION_SUBFOLDER / "config.json")
            return MFRSVLMConfig.from_dict(released_config(data, vision, path=path))
        if model_type == "llava" and is_llava_hf_config(data):
            llava = read_llava_hf_config(folder)
            return MFRSVLMConfig(
                vision=llava["vision_config"],
                llm=llava["llm_config"],
                global_layer=llava["vision_select_layer"],
                detail=False,
                injection_layers=(),
                image_placement="token",
                image_token_index=llava["image_token_index"],
            )
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from None
    raise CheckpointError(
        f"{path}: model_type {model_type!r} is not a folder MFRSVLMProcessor reads (rsfuse 'rsfuse_mfrsvlm', released "
        "'mfrsvlm'/'vhm', transformers 'llava'); build one with MFRSVLMProcessor.from_model(model, tokenizer)"
    )


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
