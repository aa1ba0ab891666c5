"""The checkpoint formats ``MFRSVLM.from_pretrained`` reads, in one registry: ``config.json``'s ``model_type`` → a
`CheckpointFormat` that reads the folder's config (config files only, no weight) and its weights.

``MFRSVLM.from_pretrained`` (``rsfuse.model.loading``) and ``MFRSVLMProcessor.from_pretrained``
(``rsfuse.processor.settings``) both resolve a folder through `checkpoint_format`, so they read a folder as the same
format, and an unknown ``model_type`` gives both the same one-line error naming the file and the known types.

============  ===========================  ===================================================================
format        ``model_type``               weights
============  ===========================  ===================================================================
rsfuse        ``rsfuse_mfrsvlm``           `rsfuse.checkpoints.rsfuse_folder.iter_rsfuse_folder`
released      ``mfrsvlm``, ``vhm``         `rsfuse.checkpoints.mfrsvlm.iter_released_mfrsvlm` (tower: ``vision_tower/``)
transformers  ``llava`` (llava-hf layout)  LLaVA parts (`rsfuse.checkpoints.llava.read_llava`), assembled as
                                           ``MFRSVLM.from_parts(llava=folder)`` assembles them
============  ===========================  ===================================================================

The original (liuhaotian) LLaVA-1.5 folders hold no vision tower, so no folder of theirs describes a whole model:
they are parts that ``MFRSVLM.from_parts(vision=CLIP_DIR, llava=FOLDER)`` reads (`read_llava`), not a format here.

Pure functions: no model class is imported, and no ``rsfuse.model`` module either. The config readers return the
dict ``MFRSVLMConfig.from_dict`` reads; the loader and the processor turn it into an ``MFRSVLMConfig``.
"""

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsfuse.checkpoints.clip import read_clip_vision_config
from rsfuse.checkpoints.io import CheckpointError, merge_shards, read_json
from rsfuse.checkpoints.llava import LLAVA_HF_LAYOUT, llava_settings
from rsfuse.checkpoints.llava_hf import is_llava_hf_config, read_llava_hf_config
from rsfuse.checkpoints.mfrsvlm import RELEASED_MODEL_TYPES, VISION_SUBFOLDER, iter_released_mfrsvlm, released_config
from rsfuse.checkpoints.rsfuse_folder import RSFUSE_MODEL_TYPE, checkpoint_model_type, iter_rsfuse_folder, rsfuse_config

__all__ = ["CheckpointFormat", "FORMATS", "MODEL_TYPES", "checkpoint_format", "read_model_config"]

ConfigReader = Callable[[Path, dict[str, Any], Path], dict[str, Any]]
Shards = Iterator[tuple[Path, dict[str, torch.Tensor]]]
WeightsReader = Callable[..., tuple[dict[str, Any], Shards]]


@dataclass(frozen=True)
class CheckpointFormat:
    """One folder layout: its name, the ``model_type`` values that mark it, and its readers.

    ``config_reader(folder, config_json, config_path)`` returns the ``MFRSVLMConfig.from_dict`` dict from config
    files alone. ``weights_reader(folder, *, check_finite)`` returns ``(that dict, iterator of (path, state dict in
    MFRSVLM's keys))``, one shard read at a time (a loader assigns and quantizes each before the next is read);
    None for a folder of LLaVA parts (decoder, projector, tower), which the loader assembles through
    ``MFRSVLM.from_parts`` so that keyword overrides keep LLaVA-1.5's defaults. ``matches(config_json)``, when
    given, must hold as well as the ``model_type`` (``mismatch`` then says what the folder is instead)."""

    name: str
    model_types: tuple[str, ...]
    config_reader: ConfigReader
    weights_reader: WeightsReader | None
    matches: Callable[[Mapping[str, Any]], bool] | None = None
    mismatch: str = ""

    @property
    def label(self) -> str:
        """How errors list the format: its name and its ``model_type`` values (``released 'mfrsvlm'/'vhm'``)."""
        return f"{self.name} " + "/".join(repr(model_type) for model_type in self.model_types)

    @property
    def reads_parts(self) -> bool:
        """Whether the folder holds LLaVA parts, assembled by ``MFRSVLM.from_parts``' road."""
        return self.weights_reader is None

    def read_config(self, folder: str | os.PathLike) -> dict[str, Any]:
        """The ``MFRSVLMConfig.from_dict`` dict this folder describes, from its config files alone; a field of the
        wrong type raises ``CheckpointError`` naming ``config.json``."""
        folder = Path(folder)
        path = folder / "config.json"
        try:
            return self.config_reader(folder, read_json(path), path)
        except (TypeError, ValueError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{path}: {error}") from None

    def read(
        self, folder: str | os.PathLike, *, check_finite: bool = True
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(MFRSVLMConfig dict, state dict)`` of the folder (``check_finite``: refuse NaN/inf tensors): the
        shards of `read_shards` merged."""
        config, shards = self.read_shards(folder, check_finite=check_finite)
        return config, merge_shards(shards)

    def read_shards(self, folder: str | os.PathLike, *, check_finite: bool = True) -> tuple[dict[str, Any], Shards]:
        """``(MFRSVLMConfig dict, iterator of (path, state dict))``: the config at once, the weights shard by shard."""
        if self.weights_reader is None:
            raise CheckpointError(
                f"{folder}: a {self.name} folder holds LLaVA parts (rsfuse.checkpoints.llava.read_llava), which "
                "MFRSVLM.from_pretrained assembles as MFRSVLM.from_parts does"
            )
        return self.weights_reader(folder, check_finite=check_finite)


def _released_config(folder: Path, data: dict[str, Any], path: Path) -> dict[str, Any]:
    vision = read_clip_vision_config(folder / VISION_SUBFOLDER / "config.json")
    return released_config(data, vision, path=path)


def _llava_hf_config(folder: Path, data: dict[str, Any], path: Path) -> dict[str, Any]:
    llava = read_llava_hf_config(folder)
    settings = llava_settings(
        layout=LLAVA_HF_LAYOUT,
        vision_select_layer=llava["vision_select_layer"],
        image_token_index=llava["image_token_index"],
    )
    return {"vision": llava["vision_config"].to_dict(), "llm": llava["llm_config"].to_dict(), **settings}


FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat(
        name="rsfuse",
        model_types=(RSFUSE_MODEL_TYPE,),
        config_reader=lambda folder, data, path: rsfuse_config(data),
        weights_reader=iter_rsfuse_folder,
    ),
    CheckpointFormat(
        name="released",
        model_types=RELEASED_MODEL_TYPES,
        config_reader=_released_config,
        weights_reader=iter_released_mfrsvlm,
    ),
    CheckpointFormat(
        name="transformers",
        model_types=("llava",),
        config_reader=_llava_hf_config,
        weights_reader=None,
        matches=is_llava_hf_config,
        mismatch=(
            "no text_config / vision_config / LlavaForConditionalGeneration: an original (liuhaotian) LLaVA-1.5 "
            "folder, which holds no vision tower; read it with MFRSVLM.from_parts(vision=CLIP_DIR, llava=FOLDER)"
        ),
    ),
)
"""Every format ``MFRSVLM.from_pretrained`` and ``MFRSVLMProcessor.from_pretrained`` read, each once."""

_BY_MODEL_TYPE: dict[str, CheckpointFormat] = {
    model_type: checkpoint for checkpoint in FORMATS for model_type in checkpoint.model_types
}
MODEL_TYPES: tuple[str, ...] = tuple(_BY_MODEL_TYPE)


def checkpoint_format(folder: str | os.PathLike) -> CheckpointFormat:
    """The format of ``folder``, chosen from ``config.json``'s ``model_type`` (never from the folder's name); an
    unknown one raises a one-line ``CheckpointError`` naming the file and the known types."""
    path = Path(folder) / "config.json"
    model_type = checkpoint_model_type(folder)
    found = _BY_MODEL_TYPE.get(model_type)
    if found is None:
        known = ", ".join(checkpoint.label for checkpoint in FORMATS)
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not an MF-RSVLM checkpoint (readable: {known}); build a model from "
            "HF CLIP + Llama/LLaVA folders with MFRSVLM.from_parts, and its processor with MFRSVLMProcessor.from_model"
        )
    if found.matches is not None and not found.matches(read_json(path)):
        raise CheckpointError(f"{path}: model_type {model_type!r} but {found.mismatch}")
    return found


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``MFRSVLMConfig.from_dict`` dict a model folder describes, from its config files only (no weight read)."""
    return checkpoint_format(folder).read_config(folder)
