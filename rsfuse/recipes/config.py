"""Recipe configuration: a typed schema of dotted keys, YAML files, and ``key=value`` command-line overrides.

Precedence: schema defaults < ``--config FILE`` (nested YAML mappings or dotted keys) < ``key=value`` arguments, in
order. Every key is checked against the schema: an unknown key raises `ConfigError` naming it (with close matches), a
value of the wrong type or outside the key's declared range (``Field(..., ge=1)``; every float must be finite) raises
naming key, value and what is allowed. Command-line values are parsed as YAML scalars
(``train.lr=2e-5``, ``data.skip_bad=true``, ``train.vit_lr=null``) and then coerced to the key's type (an int where a
float is expected is accepted). The open ``model.*`` namespace carries `MFRSVLMConfig` fields; it is collected as
is here and checked against the model's configuration by the recipe (``model=tiny`` is short for ``model.preset=tiny``).
"""

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

__all__ = ["ConfigError", "Field", "SCHEMA", "RecipeConfig", "load_config", "parse_args", "flatten", "unflatten"]

OPEN_NAMESPACES = ("model.",)


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key (and the file when one is involved)."""


@dataclass(frozen=True)
class Field:
    """One schema entry: its type, default, optional allowed values, whether null (None) is allowed, and for numbers
    the allowed range (``ge``/``gt``: lower bound inclusive/exclusive, ``le``/``lt``: upper bound). A float value must
    also be finite."""

    type: type
    default: Any
    help: str
    choices: tuple = ()
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None

    def bounds(self) -> str:
        """The declared range as text (``">= 1"``, ``"> 0 and < 1"``); ``""`` when there is none."""
        parts = [f"{op} {value:g}" for op, value in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if value is not None]
        return " and ".join(parts)

    def check_range(self, value: int | float) -> str | None:
        """Why ``value`` is outside the range (None when it is inside)."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if inside else f"must be {self.bounds()}"


TRAINABLE = ("frozen", "full", "lora")

SCHEMA: dict[str, Field] = {
    "output_dir": Field(str, "runs/mf_rsvlm_tiny", "where metrics, checkpoints, final/ and plots go"),
    "seed": Field(int, 0, "seed of initialisation, data order and every RNG", ge=0),
    "max_steps": Field(int, 640, "optimizer steps to run; 0 = train.epochs full epochs", ge=0),
    "save_every": Field(int, 160, "checkpoint every N optimizer steps (0 = only at the end)", ge=0),
    "keep_last": Field(int, 2, "keep the newest K checkpoints (0 = all)", ge=0),
    "resume": Field(str, "auto", "auto (newest complete checkpoint, if any) | none | PATH of a step_N folder"),
    "device": Field(str, "auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda")),
    "num_threads": Field(int, 0, "torch CPU threads (0 = torch's default)", ge=0),
    "data.json": Field(str, "data/synthetic/train.json", "LLaVA-format training JSON"),
    "data.image_root": Field(str, "data/synthetic", "root folder of the image paths"),
    "data.val_json": Field(str, "data/synthetic/val.json", "validation JSON ('' = none)"),
    "data.test_json": Field(str, "data/synthetic/test.json", "test JSON for the after-training evaluation ('' = none)"),
    "data.skip_bad": Field(bool, False, "skip unreadable images / malformed samples instead of failing"),
    "data.bands": Field(list, None, "band indices shown as red, green, blue for multi-band TIFFs, e.g. [3,2,1] "
                                    "(null = refuse images of more than 3 colour bands)", nullable=True, ge=0, length=3),
    "data.allow_outside_root": Field(bool, False, "allow image paths outside data.image_root (absolute or '..')"),
    "data.max_length": Field(int, 128, "maximum text tokens per sample (longer samples are truncated; at most the "
                                         "decoder's max_position_embeddings)", ge=1),
    "data.template": Field(str, "vicuna_v1", "conversation template: plain | vicuna_v1 | ..."),
    "data.tokenizer": Field(str, "", "tokenizer folder; '' = <output_dir>/tokenizer, trained on the data if missing"),
    "data.vocab_size": Field(int, 512, "vocabulary size when a sentencepiece tokenizer is trained", ge=8),
    "data.synthetic": Field(bool, True, "create the synthetic benchmark at data.image_root when data.json is missing"),
    "data.synthetic_images": Field(int, 1200, "number of synthetic images to create", ge=1),
    "data.num_workers": Field(int, 0, "DataLoader worker processes for training batches (0 = load in the main "
                                      "process)", ge=0),
    "data.group_by_length": Field(bool, False, "group samples of similar length into batches"),
    "train.lr": Field(float, 3e-3, "peak learning rate", gt=0),
    "train.vit_lr": Field(float, None, "learning rate of the vision tower (null = train.lr)", nullable=True, gt=0),
    "train.batch_size": Field(int, 16, "samples per micro-batch per process", ge=1),
    "train.grad_accum": Field(int, 1, "micro-batches per optimizer step", ge=1),
    "train.weight_decay": Field(float, 0.0, "AdamW weight decay (matrices only)", ge=0),
    "train.warmup_ratio": Field(float, 0.05, "fraction of steps with linear warmup", ge=0, lt=1),
    "train.max_grad_norm": Field(float, 1.0, "gradient clipping norm (0 = off)", ge=0),
    "train.epochs": Field(int, 1, "epochs when max_steps is 0", ge=1),
    "train.gradient_checkpointing": Field(bool, False, "recompute decoder activations in backward"),
    "train.dtype": Field(str, "auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16",
                         choices=("auto", "fp32", "bf16")),
    "train.val_every": Field(int, 160, "validation loss every N steps (0 = only at the end)", ge=0),
    "train.val_samples": Field(int, 64, "validation samples per evaluation (0 = all)", ge=0),
    "train.cache_vision_features": Field(bool, False, "reuse the frozen tower's features of images seen before "
                                                  "(needs train.trainable.vit=frozen)"),
    "train.feature_cache_dir": Field(str, "", "folder where cached tower features persist between runs that share a "
                                              "tower and canvas settings ('' = this run only)"),
    "train.log_every": Field(int, 1, "progress-bar refresh every N steps", ge=1),
    "train.trainable.vit": Field(str, "full", "vision tower: frozen | full | lora", choices=TRAINABLE),
    "train.trainable.projector": Field(str, "full", "projector: frozen | full | lora", choices=TRAINABLE),
    "train.trainable.injector": Field(str, "full", "injectors/routers: frozen | full | lora", choices=TRAINABLE),
    "train.trainable.llm": Field(str, "full", "decoder: frozen | full | lora (peft on its linear layers)",
                                 choices=TRAINABLE),
    "train.lora.r": Field(int, 8, "LoRA rank", ge=1),
    "train.lora.alpha": Field(int, 16, "LoRA alpha", ge=1),
    "train.lora.dropout": Field(float, 0.0, "LoRA dropout", ge=0, lt=1),
    "eval.after_train": Field(bool, True, "evaluate on data.test_json by generation after training"),
    "eval.max_new_tokens": Field(int, 16, "generation budget per answer", ge=1),
    "eval.batch_size": Field(int, 32, "batch size of the generation evaluation", ge=1),
    "eval.max_samples": Field(int, 0, "evaluate at most N test samples (0 = all)", ge=0),
    "model.preset": Field(str, "tiny_cpu", "MFRSVLMConfig preset: tiny_cpu (the CPU default) | tiny | paper"),
    "model.init_from": Field(str, "", "checkpoint folder to initialise from (MFRSVLM.from_pretrained layout)"),
    "model.vision_from": Field(str, "", "HF CLIP folder to initialise the tower from (MFRSVLM.from_parts)"),
    "model.vision_weights": Field(str, "", "HF CLIP vision folder whose weights replace the tower of a model built "
                                           "from model.preset (its config must equal the preset's tower)"),
    "model.llm_from": Field(str, "", "HF Llama/Vicuna folder to initialise the decoder from (MFRSVLM.from_parts)"),
    "model.llava_from": Field(str, "", "LLaVA-1.5 folder for projector + decoder (MFRSVLM.from_parts)"),
}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; keys already dotted are kept."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} is not a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _coerce(key: str, value: Any, field: Field, origin: str) -> Any:
    where = f" (in {origin})" if origin else ""
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"config key {key!r}{where}: null is not allowed; expected {field.type.__name__}")
    expected = field.type
    if expected is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0", "on", "off"}:
            result = value.lower() in {"true", "yes", "1", "on"}
        else:
            raise ConfigError(f"config key {key!r}{where}: expected true/false, got {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key {key!r}{where}: expected an integer, got {value!r}")
        try:
            result = int(value)
        except ValueError:
            raise ConfigError(f"config key {key!r}{where}: expected an integer, got {value!r}") from None
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r}{where}: expected a number, got {value!r}")
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r}{where}: expected a number, got {value!r}") from None
    elif expected is list:  # a list of integers: YAML [3, 2, 1] or "3,2,1"
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"config key {key!r}{where}: expected a list of integers, got {value!r}")
        try:
            result = [int(str(item).strip()) for item in items if not isinstance(item, (bool, float))]
        except ValueError:
            raise ConfigError(f"config key {key!r}{where}: expected a list of integers, got {value!r}") from None
        if len(result) != len(items) or (field.length is not None and len(result) != field.length):
            size = f"{field.length} integers" if field.length is not None else "integers"
            raise ConfigError(f"config key {key!r}{where}: expected a list of {size}, got {value!r}")
        for item in result:
            problem = field.check_range(item)
            if problem is not None:
                raise ConfigError(f"config key {key!r}{where}: every entry {problem}, got {value!r}")
    elif expected is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r}{where}: expected a string, got {value!r}")
        result = str(value)
    else:
        raise ConfigError(f"config key {key!r}: unsupported schema type {expected}")
    if expected in (int, float):
        problem = field.check_range(result)
        if problem is not None:
            raise ConfigError(f"config key {key!r}{where}: {problem}, got {value!r}")
    if field.choices and result not in field.choices:
        raise ConfigError(f"config key {key!r}{where}: {result!r} is not one of {', '.join(map(str, field.choices))}")
    return result


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


@dataclass
class RecipeConfig:
    """A validated configuration: ``values`` (schema keys → typed values) and ``model`` (open ``model.*`` overrides,
    dotted keys without the ``model.`` prefix). Read values with ``config["train.lr"]``."""

    values: dict[str, Any]
    model: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        if key not in self.values:
            raise KeyError(f"unknown config key {key!r}")
        return self.values[key]

    def to_dict(self) -> dict:
        """Nested plain dict (what `save` writes and `load_config` reads back)."""
        flat = dict(self.values)
        flat.update({f"model.{k}": v for k, v in self.model.items()})
        return unflatten(flat)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _apply(values: dict, model: dict, key: str, value: Any, origin: str) -> None:
    if key == "model" and isinstance(value, str):
        key = "model.preset"
    if key in SCHEMA:
        values[key] = _coerce(key, value, SCHEMA[key], origin)
        return
    if key.startswith(OPEN_NAMESPACES) and len(key) > len("model."):
        model[key[len("model."):]] = value
        return
    close = difflib.get_close_matches(key, list(SCHEMA), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    where = f" (in {origin})" if origin else ""
    raise ConfigError(f"unknown config key {key!r}{where}{hint}")


def config_entries(path: str | os.PathLike | None, overrides: Sequence[str]) -> Iterator[tuple[str, Any, str]]:
    """``(dotted key, value, origin)`` from the YAML file at ``path`` (if given), then the ``key=value`` overrides,
    in the order they apply. Shared by the training and evaluation recipes."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(tree).__name__}")
        for key, value in flatten(tree).items():
            yield key, value, str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        yield key.strip(), _parse_scalar(text), "command line"


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``key=value`` overrides."""
    values = {key: field.default for key, field in SCHEMA.items()}
    model: dict[str, Any] = {}
    for key, value, origin in config_entries(path, overrides):
        _apply(values, model, key, value, origin)
    return RecipeConfig(values=values, model=model)


USAGE = """usage: mf_rsvlm_train.py [--config FILE] [--debug] [key=value ...]

--debug (or RSFUSE_DEBUG=1) shows the traceback of an expected error (bad data, configuration or checkpoint), which
otherwise is one line naming the file, sample or key, with exit status 2.

Without arguments: the embedded default (synthetic data, sentencepiece tokenizer, tiny MF-RSVLM on the CPU, then a
generation evaluation on the synthetic test split). Keys (dotted; model.* takes MFRSVLMConfig fields):
"""


def help_text() -> str:
    lines = [USAGE]
    for key, field in SCHEMA.items():
        allowed = f"; {field.bounds()}" if field.bounds() else ""
        lines.append(f"  {key:32s} {field.help} [default: {field.default!r}{allowed}]")
    return "\n".join(lines)


def split_config_argv(argv: Sequence[str], help_text: str) -> tuple[str | None, list[str]] | None:
    """Split ``[--config FILE] [key=value ...]`` into (config path, overrides); None after printing ``help_text``
    for ``-h``/``--help``. Shared by the training and evaluation recipes."""
    argv = list(argv)
    config_path = None
    overrides = []
    index = 0
    while index < len(argv):
        item = argv[index]
        if item in ("-h", "--help"):
            print(help_text)
            return None
        if item == "--config":
            if index + 1 >= len(argv):
                raise ConfigError("--config needs a file path")
            config_path = argv[index + 1]
            index += 2
            continue
        if item.startswith("--config="):
            config_path = item.split("=", 1)[1]
        elif item.startswith("--"):
            raise ConfigError(f"unknown option {item!r} (use key=value overrides, or --config FILE)")
        else:
            overrides.append(item)
        index += 1
    return config_path, overrides


def parse_args(argv: Sequence[str]) -> RecipeConfig | None:
    """Parse ``[--config FILE] [key=value ...]``; returns None after printing help for ``-h``/``--help``."""
    parsed = split_config_argv(argv, help_text())
    return None if parsed is None else load_config(*parsed)
