"""Building an ``MFRSVLM`` from checkpoints and writing it back (docs/DESIGN_NOTES.md §3).

* ``load_pretrained``: the layout is chosen from ``config.json``'s ``model_type`` — "rsfuse_mfrsvlm" (rsfuse folder),
  "mfrsvlm" / "vhm" (released MF-RSVLM) or "llava" (transformers' llava-hf) — never from the folder name, through
  the one registry of formats, ``rsfuse.checkpoints.formats`` (which ``MFRSVLMProcessor.from_pretrained`` uses too).
* ``load_from_parts``: HF CLIP folder + HF Llama folder and/or LLaVA-1.5 folder (liuhaotian or llava-hf layout; a
  llava-hf folder brings its own tower and gives the LLaVA-1.5 settings by default); new modules are initialised.
* ``save_pretrained``: rsfuse folder (config, sharded safetensors, tokenizer.model, and ``processor_config.json``
  recording the conversation template for ``MFRSVLMProcessor``).

A Hub repository id works wherever a folder does (``rsfuse.checkpoints.hub.resolve_model``, called first).
Loading builds the model on the meta device and assigns the checkpoint tensors shard by shard as the readers yield
them (no random initialisation, one copy of the weights in memory); with ``quantization`` each decoder linear is
quantized as soon as its shard is in (``rsfuse.model.quantization``). Every key is checked: missing and unexpected
keys are listed, a wrong shape names the key and both shapes. Floating tensors holding NaN/inf are refused as the
files are read (``check_finite=True``), naming the file and the key.
"""

import json
import os
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from rsfuse.checkpoints.assign import assign_weights, check_nothing_on_meta
from rsfuse.checkpoints.clip import read_clip_vision
from rsfuse.checkpoints.formats import MODEL_TYPES, checkpoint_format
from rsfuse.checkpoints.hub import resolve_model
from rsfuse.checkpoints.io import CheckpointError, read_json
from rsfuse.checkpoints.llama import iter_llama_shards, read_llama_config
from rsfuse.checkpoints.llava import llava_settings, read_llava
from rsfuse.checkpoints.model_card import MODEL_CARD_FILE, model_card
from rsfuse.checkpoints.rsfuse_folder import TOKENIZER_FILE, write_rsfuse_folder
from rsfuse.model.config import MFRSVLMConfig
from rsfuse.model.quantization import QuantizationError, StreamingQuantizer, check_quantization, refuse_prequantized
from rsfuse.options import DEFAULT_TEMPLATE

__all__ = ["load_pretrained", "load_from_parts", "save_pretrained", "READABLE_MODEL_TYPES"]

READABLE_MODEL_TYPES = MODEL_TYPES  # the registry's (rsfuse.checkpoints.formats)
PROCESSOR_CONFIG_FILE = "processor_config.json"


def _stored_dtype(shard: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype a load keeps when none is asked: the first shard's decoder weights' (else its first float's)."""
    floats = [(key, value) for key, value in shard.items() if value.is_floating_point()]
    decoder = [value for key, value in floats if key.startswith("llm.")]
    return (decoder or [value for _, value in floats] or [torch.empty(0)])[0].dtype


def _build(cls, config: MFRSVLMConfig, shards: Iterable[tuple[Any, dict[str, torch.Tensor]]], *, dtype, device,
           source: str, quantization: str | None = None, new_parts: tuple[str, ...] = (), required=None):
    """Build on the meta device, then assign the shards one at a time (``rsfuse.checkpoints.assign``), quantizing
    the decoder linears each shard completes (``rsfuse.model.quantization``); ``new_parts`` are built for real on
    ``device`` and start random (``from_parts``' projector / injectors).

    ``dtype`` None: the stored dtype (`_stored_dtype` of the first shard), applied to every weight.
    """
    shards = iter(shards)
    first = next(shards, None)
    if dtype is None:
        dtype = torch.float32 if new_parts or first is None else _stored_dtype(first[1])
    with torch.device("meta"):
        model = cls(config)
    for name in new_parts:
        with torch.device(device):
            setattr(model, name, cls.new_part(config, name).to(dtype))
    quantizer = StreamingQuantizer(model, quantization, compute_dtype=dtype) if quantization else None
    tied = {"llm.lm_head.weight"} if config.llm.tie_word_embeddings else set()
    stream = shards if first is None else _prepend(first, shards)
    first = None  # from here the stream alone holds the first shard, until it is assigned
    assign_weights(model, stream, dtype=dtype, device=device, source=source, skip=tied, required=required,
                   after_shard=quantizer, transient=None if quantizer is None else quantizer.replaces)
    model.llm.tie_weights()
    model.llm.model.rotary_emb.reset_parameters(device)
    if quantizer is not None:
        quantizer.finish()
    check_nothing_on_meta(model, source=source)
    return model.eval()


def _prepend(first: Any, rest: Iterable[Any]) -> Iterator[Any]:
    """``first`` then ``rest``, keeping no reference to ``first`` once it is handed out (a loader that kept the first
    shard kept a whole memory-mapped file resident through the load)."""
    box = [first]
    del first
    yield box.pop()
    yield from rest


def _config_from_dict(data: dict[str, Any], overrides: dict[str, Any], source: str) -> MFRSVLMConfig:
    try:
        return MFRSVLMConfig.from_dict({**data, **overrides})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from None


def load_pretrained(
    cls, path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False, quantization: str | None = None, dtype=None, device="cpu",
    check_finite: bool = True, **overrides: Any,
):
    """``MFRSVLM`` from an rsfuse folder, a released MF-RSVLM folder or a transformers LLaVA (llava-hf) folder, picked
    by ``config.json``'s ``model_type`` (``rsfuse.checkpoints.formats.checkpoint_format``); ``path`` may also be a
    Hub repository id (``rsfuse.checkpoints.hub.resolve_model``: ``revision``, ``cache_dir``, ``local_files_only``).

    ``dtype`` None: the decoder's stored dtype, applied to every weight (one dtype for the whole model).
    ``check_finite``: refuse a checkpoint with NaN/inf tensors, naming the file and the keys.
    """
    source = resolve_model(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    folder = source.path
    checkpoint = checkpoint_format(folder)
    refuse_prequantized(read_json(folder / "config.json"), str(folder), quantization)
    check_quantization(quantization, device)
    if checkpoint.reads_parts:  # transformers' LLaVA layout (llava-hf): LLaVA-1.5 semantics, tower in the folder
        model = load_from_parts(cls, vision=None, llm=None, llava=folder, dtype=dtype, device=device,
                                check_finite=check_finite, quantization=quantization, **overrides)
    else:
        config_data, shards = checkpoint.read_shards(folder, check_finite=check_finite)
        config = _config_from_dict(config_data, overrides, str(folder))
        model = _build(cls, config, shards, dtype=dtype, device=device, source=str(folder), quantization=quantization)
    tokenizer = folder / TOKENIZER_FILE
    model.tokenizer_path = tokenizer if tokenizer.is_file() else None
    model.chat_template = recorded_template(folder)
    model.source = source
    return model


def recorded_template(folder: str | os.PathLike) -> str | None:
    """The conversation template an rsfuse ``processor_config.json`` in ``folder`` records (None without one)."""
    path = Path(folder) / PROCESSOR_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("processor_class") != "MFRSVLMProcessor":
        return None  # transformers' LlavaProcessor writes a file of the same name
    template = data.get("template")
    return template if isinstance(template, str) else None


def load_from_parts(
    cls,
    *,
    vision: str | os.PathLike | None = None,
    llm: str | os.PathLike | None = None,
    llava: str | os.PathLike | None = None,
    dtype=None,
    device="cpu",
    check_finite: bool = True,
    quantization: str | None = None,
    hub: dict[str, Any] | None = None,
    **overrides: Any,
):
    """``MFRSVLM`` from an HF CLIP folder + an HF Llama folder and/or a LLaVA-1.5 folder, each a folder or a Hub
    repository id (``hub``: ``cache_dir`` / ``local_files_only`` for `rsfuse.checkpoints.hub.resolve_model`).

    With ``llava`` the decoder and projector come from it (and ``global_layer`` defaults to its select layer);
    without it the projector is newly initialised. Injectors are always new. A llava-hf folder
    (``LlavaForConditionalGeneration.save_pretrained``) also gives the tower when ``vision`` is None, and the
    LLaVA-1.5 settings (``detail=False``, ``image_placement="token"``, its image token) unless ``overrides`` say
    otherwise. When every weight comes from the files (a LLaVA folder with ``detail=False``) the model is built on
    the meta device and ``dtype`` None keeps the stored dtype; otherwise new modules are initialised and ``dtype``
    None leaves float32. The tokenizer is taken from the LLaVA folder, else the Llama folder.
    """
    if llm is None and llava is None:
        raise ValueError("MFRSVLM.from_parts: give an llm folder (HF Llama/Vicuna) or a llava folder (LLaVA-1.5)")
    vision, llm, llava = (
        None if part is None else resolve_model(part, **(hub or {})).path for part in (vision, llm, llava)
    )
    for folder in (llm, llava):
        if folder is not None:
            refuse_prequantized(read_json(Path(folder) / "config.json"), str(folder), quantization)
    check_quantization(quantization, device)
    parts = read_llava(llava, check_finite=check_finite) if llava is not None else None
    if vision is not None:
        vision_config, tower_state = read_clip_vision(vision, check_finite=check_finite)
    elif parts is not None and parts.vision_state_dict is not None and parts.vision_config is not None:
        vision_config, tower_state = parts.vision_config, parts.vision_state_dict
    else:
        raise ValueError(
            f"MFRSVLM.from_parts: vision=CLIP_DIR is needed: {llava or llm} holds no vision tower (only a llava-hf "
            "folder, written by transformers' LlavaForConditionalGeneration, carries one)"
        )
    if parts is not None:
        llm_config = parts.llm_config
        llm_shards = [(llava, {"llm." + key: value for key, value in parts.llm_state_dict.items()})]
        settings = llava_settings(layout=parts.layout, vision_select_layer=parts.vision_select_layer,
                                  image_token_index=parts.image_token_index, overrides=overrides)
    else:
        llm_config = read_llama_config(llm)
        llm_shards = ((path, {"llm." + key: value for key, value in shard.items()})
                      for path, shard in iter_llama_shards(llm, check_finite=check_finite))
        settings = dict(overrides)
    try:
        config = MFRSVLMConfig(vision=vision_config, llm=llm_config, **settings)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"MFRSVLM.from_parts: {error}") from None
    source = f"from_parts(vision={vision}, llm={llm}, llava={llava})"
    shards = [(vision or llava, {"vision_tower." + key: value for key, value in tower_state.items()})]
    projector = parts.projector_state_dict if parts is not None else None
    if projector is not None:
        shards.append((llava, {"projector." + key: value for key, value in projector.items()}))
    if projector is not None and not config.detail:  # every weight comes from the files (e.g. a llava-hf folder)
        new_parts: tuple[str, ...] = ()
    else:  # the injectors (and the projector without LLaVA) start random; dtype None then means float32
        new_parts = ("injectors",) if projector is not None else ("projector", "injectors")
    tied = {"llm.lm_head.weight"} if config.llm.tie_word_embeddings else set()
    required = [key for key in _meta_keys(cls, config) if not key.startswith(new_parts) and key not in tied]
    model = _build(cls, config, chain(shards, llm_shards), dtype=dtype, device=device, source=source,
                   quantization=quantization, new_parts=new_parts, required=required)
    model.tokenizer_path = _parts_tokenizer(llava, llm)
    return model


def _meta_keys(cls, config: MFRSVLMConfig) -> list[str]:
    with torch.device("meta"):
        return list(cls(config).state_dict())


def _parts_tokenizer(*folders: str | os.PathLike | None) -> Path | None:
    """The first ``tokenizer.model`` among ``folders`` (the LLaVA folder before the Llama one)."""
    for candidate in folders:
        if candidate is not None and (Path(candidate) / TOKENIZER_FILE).is_file():
            return Path(candidate) / TOKENIZER_FILE
    return None


def _tokenizer_file(model, tokenizer: Any, folder: Path) -> Path | None:
    """The ``tokenizer.model`` to copy: from a path, a folder, an object with ``save_pretrained``, or the model's own."""
    if tokenizer is None:
        return model.tokenizer_path
    if isinstance(tokenizer, (str, os.PathLike)):
        candidate = Path(tokenizer)
        return candidate / TOKENIZER_FILE if candidate.is_dir() else candidate
    if callable(getattr(tokenizer, "save_pretrained", None)):
        # rsfuse's Tokenizer returns the folder, others a file or a tuple of files (transformers): the file written
        # into ``folder`` is what counts.
        tokenizer.save_pretrained(folder)
        return folder / TOKENIZER_FILE
    raise TypeError(f"save_pretrained: tokenizer must be a path or have save_pretrained(), got {type(tokenizer).__name__}")


def save_pretrained(
    model, path: str | os.PathLike, *, tokenizer: Any = None, max_shard_bytes: int = 2 * 1024**3,
    template: str | None = None,
) -> Path:
    """Write ``model`` as an rsfuse folder; returns the folder. ``processor_config.json`` records the conversation
    template (``template``, else the one the model was loaded with, else "vicuna_v1") for ``MFRSVLMProcessor``."""
    if getattr(model, "quantization", None):
        raise QuantizationError(
            f"save_pretrained: the decoder is quantized ({model.quantization}); rsfuse writes full-precision weights "
            f"only: save the full-precision model and quantize at load (from_pretrained(..., "
            f"quantization={model.quantization!r}))"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict()
    if model.config.llm.tie_word_embeddings:
        state_dict.pop("llm.lm_head.weight", None)
    tokenizer_file = _tokenizer_file(model, tokenizer, folder)
    write_rsfuse_folder(
        folder, model.config.to_dict(), state_dict, tokenizer_file=tokenizer_file, max_shard_bytes=max_shard_bytes
    )
    if tokenizer_file is not None:
        model.tokenizer_path = folder / TOKENIZER_FILE
    _record_template(folder, template or getattr(model, "chat_template", None))
    model.chat_template = recorded_template(folder)
    source = getattr(model, "source", None)
    card = model_card(folder, model.config.to_dict(), source=source.describe() if source else None,
                      template=model.chat_template or DEFAULT_TEMPLATE)
    (folder / MODEL_CARD_FILE).write_text(card)
    return folder


def _record_template(folder: Path, template: str | None) -> None:
    """Write the template into rsfuse's ``processor_config.json`` (other fields a processor saved there are kept;
    without a template, the one already recorded, else "vicuna_v1")."""
    path = folder / PROCESSOR_CONFIG_FILE
    record: dict[str, Any] = {"processor_class": "MFRSVLMProcessor"}
    if recorded_template(folder) is not None:
        record = json.loads(path.read_text())
    record["template"] = template or record.get("template") or DEFAULT_TEMPLATE
    path.write_text(json.dumps(record, indent=2) + "\n")
