"""What a training run builds before its first step: the model configuration (preset + ``model.*`` overrides +
tokenizer), tower weights, the synthetic benchmark when asked, the tokenizer, the datasets and their pre-check.

Each function takes the recipe's typed configuration (`rsfuse.recipes.train_args.TrainRecipeConfig`, or only the
section it names) and raises `ConfigError` naming the key for a setting that cannot work.
"""

import json
import os
import shutil
import sys
from pathlib import Path

from rsfuse.recipes.config import ConfigError
from rsfuse.train.checkpointing import list_checkpoints
from rsfuse.train.distributed import DistributedContext

__all__ = [
    "build_model_config",
    "load_tower_weights",
    "check_model_source_keys",
    "check_context_length",
    "prepare_synthetic_data",
    "prepare_tokenizer",
    "build_datasets",
    "check_data",
    "resume_candidates",
    "resume_setting_changes",
    "check_resume_settings",
    "NOT_RUN_DEFINING",
    "SCHEDULE_LENGTH_KEYS",
]

NOT_RUN_DEFINING = frozenset({
    "output_dir", "resume", "save_every", "keep_last", "device", "num_threads",
    "data.num_workers", "data.val_json", "data.test_json",
    "train.log_every", "train.val_every", "train.val_samples", "train.cache_vision_features", "train.feature_cache_dir",
})
"""Keys a resumed run may change: where and how often it writes, where it runs, validation and the end-of-training
evaluation (``eval.*``); none of them changes the trained weights."""
SCHEDULE_LENGTH_KEYS = ("max_steps", "train.epochs")
"""Keys a resumed run may change with a notice: the run's length, hence the learning-rate schedule's."""
NOT_SET = "<not set>"


# ---------------------------------------------------------------------------------------------------- the model


def build_model_config(config, tokenizer):
    """The `MFRSVLMConfig`: ``model.preset`` (`MFRSVLMConfig.preset`), then the ``model.*`` overrides, then the
    tokenizer's vocabulary size and special ids (when a tokenizer is given)."""
    from rsfuse.model import MFRSVLMConfig

    model = config.model
    try:
        data = MFRSVLMConfig.preset(model.preset).to_dict()
    except ValueError as error:
        raise ConfigError(f"config key 'model.preset': {error}") from None
    for key, value in model.overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    if tokenizer is not None:
        data["llm"].update(
            vocab_size=tokenizer.vocab_size,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    try:
        return MFRSVLMConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model configuration: {error}") from None


def load_tower_weights(model, folder: str) -> None:
    """Replace ``model``'s vision tower weights by those of the HF CLIP vision folder ``folder``; its config must be
    the model's tower config (ConfigError naming both otherwise)."""
    from rsfuse.checkpoints.clip import read_clip_vision

    stored, state_dict = read_clip_vision(folder)
    stored, wanted = stored.to_dict(), model.config.vision.to_dict()
    if stored != wanted:
        differing = {key: (value, stored.get(key)) for key, value in wanted.items() if stored.get(key) != value}
        raise ConfigError(f"model.vision_weights={folder}: its tower config differs from the preset's tower "
                          f"(key: (preset, folder)) {differing}")
    model.vision_tower.load_state_dict(state_dict)


def check_model_source_keys(config) -> None:
    """Refuse combinations of the model-source and feature-cache keys that cannot work, before any data is read."""
    model, train = config.model, config.train
    if model.vision_weights and (model.init_from or model.vision_from):
        raise ConfigError("model.vision_weights applies to a model built from model.preset; it cannot be combined "
                          "with model.init_from or model.vision_from")
    if model.quantization != "none":
        if not (model.init_from or model.vision_from):
            raise ConfigError(f"model.quantization={model.quantization} quantizes loaded weights: give model.init_from "
                              "or model.vision_from (a model built from model.preset starts random)")
        if train.trainable.llm == "full":
            raise ConfigError(f"model.quantization={model.quantization}: a quantized decoder cannot be trained in full; "
                              "use train.trainable.llm=lora (QLoRA) or frozen")
    if train.cache_vision_features and train.trainable.vit != "frozen":
        raise ConfigError("train.cache_vision_features=true needs train.trainable.vit=frozen (got "
                          f"{train.trainable.vit!r})")
    if train.feature_cache_dir and not train.cache_vision_features:
        raise ConfigError("train.feature_cache_dir needs train.cache_vision_features=true")


def check_context_length(config, model_config) -> None:
    """Refuse ``data.max_length`` beyond the decoder's context: an image sample holds the visual tokens in place of
    its ``<image>`` token, so text + visual tokens - 1 must fit in ``max_position_embeddings``."""
    context = model_config.llm.max_position_embeddings
    visual = model_config.num_visual_tokens
    max_length = config.data.max_length
    if max_length + max(visual - 1, 0) > context:
        raise ConfigError(
            f"config key 'data.max_length': {max_length} text tokens (+ {visual} visual tokens in "
            f"place of <image>) exceed the decoder's context, max_position_embeddings = {context}; "
            f"use data.max_length <= {context - max(visual - 1, 0)}"
        )


# ---------------------------------------------------------------------------------------------------- data


def prepare_synthetic_data(config, context: DistributedContext) -> None:
    """Write the synthetic benchmark at ``data.image_root`` when ``data.json`` is missing and ``data.synthetic``."""
    data = config.data
    if Path(data.json).is_file():
        return
    if not data.synthetic:
        raise ConfigError(f"data.json: {data.json} not found (set data.synthetic=true to create the benchmark)")
    if context.is_main:
        from rsfuse.synthetic.benchmark import generate

        print(f"[rsfuse] writing the synthetic benchmark ({data.synthetic_images} images) to {data.image_root}",
              file=sys.stderr)
        generate(data.image_root, n_images=data.synthetic_images, seed=config.seed,
                 workers=max(1, min(4, os.cpu_count() or 1)))
    context.barrier()
    if not Path(data.json).is_file():
        raise ConfigError(f"data.json: {data.json} is still missing after writing the synthetic benchmark "
                          f"to {data.image_root} (does data.json point into data.image_root?)")


def _conversation_texts(json_path: Path) -> list[str]:
    """The training conversations' text (for the tokenizer); a file that is not JSON is named with its line and
    column (`InstructionDataError`); malformed entries are left for the data check, which names them."""
    from rsfuse.data.instructions import InstructionDataError

    try:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InstructionDataError(f"{json_path}: not valid JSON at line {error.lineno}, column {error.colno} "
                                   f"({error.msg})") from None
    except UnicodeDecodeError as error:
        raise InstructionDataError(f"{json_path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(records, list):
        raise InstructionDataError(f"{json_path}: expected a JSON list of samples, found {type(records).__name__}")
    texts = []
    for record in records:
        turns = record.get("conversations", []) if isinstance(record, dict) else []
        for turn in turns if isinstance(turns, list) else []:
            if isinstance(turn, dict):
                texts.append(str(turn.get("value", "")).replace("<image>", "").strip())
    return texts


def prepare_tokenizer(config, context: DistributedContext, output_dir: Path):
    """``data.tokenizer`` if given; else ``model.init_from``'s tokenizer; else ``<output_dir>/tokenizer`` (trained with
    sentencepiece on the training conversations and the template's fixed text when missing)."""
    from rsfuse.checkpoints.hub import resolve_model
    from rsfuse.llm.templates import build_prompt
    from rsfuse.llm.tokenizer import Tokenizer, train_sentencepiece

    data, model = config.data, config.model
    if data.tokenizer:
        return Tokenizer.from_pretrained(data.tokenizer)
    for source in (model.init_from, model.llava_from, model.llm_from):
        folder = resolve_model(source, need="processor").path if source else None  # a folder or a Hub id
        if folder is not None and (folder / "tokenizer.model").is_file():
            return Tokenizer.from_pretrained(folder)
    folder = output_dir / "tokenizer"
    if not (folder / "tokenizer.model").is_file():
        if context.is_main:
            texts = _conversation_texts(Path(data.json))
            prompt = build_prompt(data.template, "question", with_image=False) if data.template != "plain" else ""
            texts += [prompt] * 50
            staging = output_dir / ".tokenizer-tmp"
            shutil.rmtree(staging, ignore_errors=True)
            train_sentencepiece(texts, staging, vocab_size=data.vocab_size)
            os.replace(staging, folder)
        context.barrier()
    return Tokenizer.from_pretrained(folder)


def build_datasets(data, tokenizer, model_config):
    """Training and validation `InstructionDataset` (``data`` = the recipe's ``data`` section) and the collate
    function: the model's `MFRSVLMProcessor` collator (right padding, sequences laid out as the processor lays them
    out for generation and evaluation)."""
    from rsfuse.data import InstructionDataset
    from rsfuse.processor import MFRSVLMProcessor

    processor = MFRSVLMProcessor.from_config(model_config, tokenizer, template=data.template)
    common = dict(
        image_root=data.image_root,
        tokenizer=tokenizer,
        template=data.template,
        processor=processor.image_processor,
        max_length=data.max_length,
        skip_bad=data.skip_bad,
        image_length=model_config.num_visual_tokens,
        bands=tuple(data.bands) if data.bands is not None else None,
        allow_outside_root=data.allow_outside_root,
    )
    train = InstructionDataset(data.json, **common)
    val = InstructionDataset(data.val_json, **common) if data.val_json else None
    return train, val, processor.collator(padding_side="right")


def check_data(train_set, val_set, context: DistributedContext) -> dict:
    """Before the first step: tokenize every sample and check every image (exists, header, size), with a progress
    bar and a one-line summary per file; bad samples raise naming file, sample and reason, or with ``data.skip_bad``
    are removed and counted. Returns ``{"train": report, "val": report}`` (`InstructionDataset.report`)."""
    reports = {}
    for name, dataset in (("train", train_set), ("val", val_set)):
        if dataset is None:
            continue
        report = dataset.preflight(progress=context.is_main)
        reports[name] = {key: report[key] for key in ("file", "records", "kept", "skipped", "truncated")}
        if context.is_main:
            skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(report["skipped"].items()))
            print(f"[rsfuse] checked {report['file']}: {report['kept']} of {report['records']} samples usable"
                  + (f"; skipped: {skipped}" if skipped else "")
                  + (f"; {report['truncated']} truncated at data.max_length" if report["truncated"] else ""),
                  file=sys.stderr)
            for reason, message in sorted(report["examples"].items()):
                print(f"[rsfuse]   e.g. {message}", file=sys.stderr)
    return reports


# ---------------------------------------------------------------------------------------------------- resuming


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(stored, current) -> bool:
    return json.dumps(stored, default=str, sort_keys=True) == json.dumps(current, default=str, sort_keys=True)


def resume_setting_changes(stored: dict, current: dict) -> tuple[list[tuple[str, object, object]],
                                                                     list[tuple[str, object, object]]]:
    """``(refused, schedule)``: the run-defining keys whose value differs between a checkpoint's ``recipe.json``
    (``stored``) and this run's settings (``current``), as ``(key, stored, current)``, and the changed schedule-length
    keys (`SCHEDULE_LENGTH_KEYS`). Keys in `NOT_RUN_DEFINING` and ``eval.*`` are ignored, as are keys a checkpoint
    of an older version did not record (``model.*`` overrides excepted: a size given or dropped is a change)."""
    old, new = _flatten(stored), _flatten(current)
    refused, schedule = [], []
    for key in sorted(set(old) | set(new)):
        if key in NOT_RUN_DEFINING or key.startswith("eval."):
            continue
        if key not in old and not key.startswith("model."):
            continue
        before, after = old.get(key, NOT_SET), new.get(key, NOT_SET)
        if _same(before, after):
            continue
        (schedule if key in SCHEDULE_LENGTH_KEYS else refused).append((key, before, after))
    return refused, schedule


def check_resume_settings(config, output_dir: Path, context: DistributedContext) -> None:
    """Before a run resumes, compare its settings with the ``recipe.json`` of the checkpoint it would resume from
    (the newest candidate holding a readable one): a changed run-defining key is a `ConfigError` naming each key and
    both values and the way out (a new ``output_dir``); a changed ``max_steps`` / ``train.epochs`` only prints that
    the schedule's length changes."""
    from rsfuse.recipes.config import to_dict

    candidates = resume_candidates(config.resume, output_dir / "checkpoints")
    for folder in candidates:
        try:
            stored = json.loads((folder / "recipe.json").read_text())
        except (OSError, ValueError):
            continue  # an older or damaged checkpoint: its own files are checked when it is read
        if isinstance(stored, dict):
            break
    else:
        return
    refused, schedule = resume_setting_changes(stored, to_dict(config))
    if refused:
        changes = "; ".join(f"{key}: {before!r} in the checkpoint, {after!r} now" for key, before, after in refused)
        raise ConfigError(
            f"{folder} was trained with other settings ({changes}); resuming would silently keep the checkpoint's "
            f"run: give a new output_dir to train with these settings (or set them back to resume)"
        )
    if schedule and context.is_main:
        changes = ", ".join(f"{key} {before} -> {after}" for key, before, after in schedule)
        print(f"[rsfuse] resuming {folder} with {changes}: the run's length and its learning-rate schedule change "
              "from here on", file=sys.stderr)


def resume_candidates(resume: str, checkpoint_root: Path) -> list[Path]:
    """Checkpoints to try, best first, for the ``resume`` key: ``auto`` every complete one newest first (a corrupt
    one falls back to the one before), a PATH just that one (it must be complete), ``none`` nothing."""
    if resume == "none":
        return []
    if resume == "auto":
        return list(reversed(list_checkpoints(checkpoint_root)))
    folder = Path(resume)
    if not (folder / "COMPLETE").is_file():
        raise ConfigError(f"config key 'resume': {folder} is not a complete checkpoint folder (no COMPLETE marker)")
    return [folder]

