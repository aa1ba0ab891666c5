"""rsfuse's own MF-RSVLM folder: ``config.json`` + sharded safetensors (+ ``tokenizer.model``).

``config.json`` holds ``model_type: "rsfuse_mfrsvlm"`` and the full ``MFRSVLMConfig.to_dict()``; weights use
``MFRSVLM``'s state-dict keys (``vision_tower.*``, ``projector.*``, ``llm.*``, ``injectors.{i}.*``), written by
``rsfuse.checkpoints.io.save_sharded``. Pure functions: no model class is imported here.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from rsfuse.checkpoints.io import (
    CheckpointError, check_floating_tensors, iter_weight_shards, merge_shards, read_json, save_sharded,
)

__all__ = [
    "RSFUSE_MODEL_TYPE", "TOKENIZER_FILE", "read_rsfuse_folder", "iter_rsfuse_folder", "rsfuse_config", "write_rsfuse_folder",
    "checkpoint_model_type",
]

RSFUSE_MODEL_TYPE = "rsfuse_mfrsvlm"
TOKENIZER_FILE = "tokenizer.model"


def checkpoint_model_type(folder: str | os.PathLike) -> str:
    """``model_type`` of ``folder/config.json`` (the only thing that decides which loader reads a folder)."""
    path = Path(folder) / "config.json"
    model_type = read_json(path).get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{path}: no 'model_type' string; cannot tell which checkpoint layout this is")
    return model_type


def rsfuse_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``MFRSVLMConfig.from_dict`` dict of an rsfuse ``config.json`` dict (the file's own markers dropped)."""
    return {key: value for key, value in data.items() if key not in ("model_type", "architectures", "torch_dtype")}


def read_rsfuse_folder(
    folder: str | os.PathLike, *, check_finite: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(MFRSVLMConfig dict, state dict)`` of an rsfuse folder (``check_finite``: refuse NaN/inf tensors); the
    shards of `iter_rsfuse_folder` merged."""
    config, shards = iter_rsfuse_folder(folder, check_finite=check_finite)
    return config, merge_shards(shards)


def iter_rsfuse_folder(
    folder: str | os.PathLike, *, check_finite: bool = True
) -> tuple[dict[str, Any], Iterator[tuple[Path, dict[str, torch.Tensor]]]]:
    """``(MFRSVLMConfig dict, iterator of (shard path, state dict))`` of an rsfuse folder, one shard read at a time.

    The config is checked (``MFRSVLMConfig.from_dict``) before any weight is read: a field of the wrong type or
    range is refused naming ``config.json`` and its key; a weight stored with an integer dtype, naming file and key;
    a key found in two shards, naming the second.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path)
    if data.get("model_type") != RSFUSE_MODEL_TYPE:
        raise CheckpointError(
            f"{config_path}: model_type {data.get('model_type')!r} is not an rsfuse folder ({RSFUSE_MODEL_TYPE!r})"
        )
    config = rsfuse_config(data)
    from rsfuse.model.config import MFRSVLMConfig  # noqa: PLC0415  (a config, no model class)

    try:
        MFRSVLMConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: {error}") from None

    def shards() -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
        seen: set[str] = set()
        for path, shard in iter_weight_shards(folder, check_finite=check_finite):
            duplicated = sorted(set(shard) & seen)
            if duplicated:
                raise CheckpointError(f"{path}: keys already read from an earlier shard: {duplicated[:5]}")
            check_floating_tensors(shard, source=path)
            seen.update(shard)
            yield path, shard
            shard = None  # nothing of this shard held while the next one is read

    return config, shards()


def write_rsfuse_folder(
    folder: str | os.PathLike,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    tokenizer_file: str | os.PathLike | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Write ``config.json`` (``model_type`` added), the shards and index, and copy ``tokenizer_file`` if given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("model-*-of-*.safetensors")) + [folder / "model.safetensors.index.json"]:
        if stale.is_file():
            stale.unlink()
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state_dict.values() if tensor.is_floating_point()})
    save_sharded(dict(state_dict), folder, max_shard_bytes=max_shard_bytes)
    data = {"model_type": RSFUSE_MODEL_TYPE, "architectures": ["MFRSVLM"], **config}
    if dtypes:
        data["torch_dtype"] = dtypes[0] if len(dtypes) == 1 else dtypes
    (folder / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    if tokenizer_file is not None:
        source = Path(tokenizer_file)
        if not source.is_file():
            raise CheckpointError(f"{source}: tokenizer file not found")
        if source.resolve() != (folder / TOKENIZER_FILE).resolve():
            shutil.copyfile(source, folder / TOKENIZER_FILE)
    return folder
