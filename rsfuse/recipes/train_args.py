"""The training recipe's configuration: one typed dataclass per section (read by `rsfuse.recipes.config`).

``python recipes/mf_rsvlm_train.py --help`` prints every key with its doc, default and range, generated from the
fields below. Top-level keys (``output_dir``, ``seed``, ``max_steps``, ...) run the job; ``data.*``, ``train.*``
(with ``train.trainable.*`` and ``train.lora.*``), ``eval.*`` and ``model.*`` are sections. ``model.*`` is open:
besides its own keys it takes any `MFRSVLMConfig` field (``model.llm.hidden_size=128``), and ``model=tiny`` is
short for ``model.preset=tiny``.
"""

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from rsfuse.model.config import PRESETS, MFRSVLMConfig
from rsfuse.options import DEFAULT_TEMPLATE
from rsfuse.recipes.config import ConfigError, describe, load_config as _load, open_section, option
from rsfuse.recipes.config import parse_args as _parse

__all__ = ["TrainRecipeConfig", "DataArgs", "TrainArgs", "TrainableArgs", "LoraArgs", "EvalArgs", "ModelArgs",
           "SCHEMA", "USAGE", "load_config", "parse_args"]

Trainable = Literal["frozen", "full", "lora"]
SYNTHETIC_ROOT = "data/synthetic"
SYNTHETIC_TRAIN_JSON = f"{SYNTHETIC_ROOT}/train.json"


@dataclass
class DataArgs:
    """Training data: the instruction files, images, tokenizer and the synthetic benchmark."""

    json: str = option(SYNTHETIC_TRAIN_JSON, "LLaVA-format training JSON")
    image_root: str = option(SYNTHETIC_ROOT, "root folder of the image paths")
    val_json: str | None = option(None, "validation JSON ('' = none; unset: the synthetic benchmark's val.json with "
                                        "the default data.json, none when data.json is given)")
    test_json: str | None = option(None, "test JSON for the after-training evaluation ('' = none; unset: the "
                                         "synthetic benchmark's test.json with the default data.json, none when "
                                         "data.json is given)")
    skip_bad: bool = option(False, "skip unreadable images / malformed samples instead of failing")
    bands: list[int] | None = option(None, "band indices shown as red, green, blue for multi-band TIFFs, e.g. "
                                           "[3,2,1] (null = refuse images of more than 3 colour bands)",
                                     ge=0, length=3)
    allow_outside_root: bool = option(False, "allow image paths outside data.image_root (absolute or '..')")
    max_length: int = option(128, "maximum text tokens per sample (longer samples are truncated; at most the "
                                  "decoder's max_position_embeddings)", ge=1)
    template: str = option(DEFAULT_TEMPLATE, f"conversation template: plain | {DEFAULT_TEMPLATE} | ...")
    tokenizer: str = option("", "tokenizer folder; '' = <output_dir>/tokenizer, trained on the data if missing")
    vocab_size: int = option(512, "vocabulary size when a sentencepiece tokenizer is trained", ge=8)
    synthetic: bool = option(True, "create the synthetic benchmark at data.image_root when data.json is missing")
    synthetic_images: int = option(1200, "number of synthetic images to create", ge=1)
    group_by_length: bool = option(False, "group samples of similar length into batches")
    num_workers: int = option(0, "DataLoader worker processes for training batches (0 = load in the main process)",
                              ge=0)

    def __post_init__(self) -> None:
        from rsfuse.llm.templates import TEMPLATES

        if self.template not in TEMPLATES:
            raise ConfigError(f"config key 'data.template': unknown conversation template {self.template!r} "
                              f"(choose from {', '.join(sorted(TEMPLATES))})")
        synthetic = self.json == SYNTHETIC_TRAIN_JSON
        if self.val_json is None:
            self.val_json = f"{SYNTHETIC_ROOT}/val.json" if synthetic else ""
        if self.test_json is None:
            self.test_json = f"{SYNTHETIC_ROOT}/test.json" if synthetic else ""


@dataclass
class TrainableArgs:
    """Training mode per part: frozen, full, or lora (peft LoRA on the part's linear layers)."""

    vit: Trainable = option("full", "vision tower: frozen | full | lora")
    projector: Trainable = option("full", "projector: frozen | full | lora")
    injector: Trainable = option("full", "injectors/routers: frozen | full | lora")
    llm: Trainable = option("full", "decoder: frozen | full | lora (peft on its linear layers)")


@dataclass
class LoraArgs:
    r: int = option(8, "LoRA rank", ge=1)
    alpha: int = option(16, "LoRA alpha", ge=1)
    dropout: float = option(0.0, "LoRA dropout", ge=0, lt=1)


@dataclass
class TrainArgs:
    """Optimisation: learning rates, batch, schedule, precision, validation and the trainable parts."""

    lr: float = option(3e-3, "peak learning rate", gt=0)
    vit_lr: float | None = option(None, "learning rate of the vision tower (null = train.lr)", gt=0)
    batch_size: int = option(16, "samples per micro-batch per process", ge=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1)
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only)", ge=0)
    warmup_ratio: float = option(0.05, "fraction of steps with linear warmup", ge=0, lt=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", ge=0)
    epochs: int = option(1, "epochs when max_steps is 0", ge=1)
    gradient_checkpointing: bool = option(False, "recompute decoder activations in backward")
    dtype: Literal["auto", "fp32", "bf16"] = option("auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16")
    val_every: int = option(160, "validation loss every N steps (0 = only at the end)", ge=0)
    val_samples: int = option(64, "validation samples per evaluation (0 = all)", ge=0)
    log_every: int = option(1, "progress-bar refresh every N steps", ge=1)
    cache_vision_features: bool = option(False, "reuse the frozen tower's features of images seen before "
                                                "(needs train.trainable.vit=frozen)")
    feature_cache_dir: str = option("", "folder where cached tower features persist between runs that share a "
                                        "tower and canvas settings ('' = this run only)")
    trainable: TrainableArgs = field(default_factory=TrainableArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)


@dataclass
class EvalArgs:
    """The generation evaluation on ``data.test_json`` after training."""

    after_train: bool = option(True, "evaluate on data.test_json by generation after training")
    max_new_tokens: int = option(16, "generation budget per answer", ge=1)
    batch_size: int = option(32, "batch size of the generation evaluation", ge=1)
    max_samples: int = option(0, "evaluate at most N test samples (0 = all)", ge=0)


@dataclass
class ModelArgs:
    """Where the model comes from; ``overrides`` holds the ``model.<MFRSVLMConfig field>`` keys given."""

    preset: str = option("tiny_cpu", "MFRSVLMConfig preset: " + " | ".join(PRESETS))
    init_from: str = option("", "checkpoint folder or Hub id to initialise from (MFRSVLM.from_pretrained layout)")
    vision_from: str = option("", "HF CLIP folder or Hub id to initialise the tower from (MFRSVLM.from_parts)")
    vision_weights: str = option("", "HF CLIP vision folder whose weights replace the tower of a model built "
                                     "from model.preset (its config must equal the preset's tower)")
    llm_from: str = option("", "HF Llama/Vicuna folder or Hub id to initialise the decoder from (MFRSVLM.from_parts)")
    llava_from: str = option("", "LLaVA-1.5 folder or Hub id for projector + decoder (MFRSVLM.from_parts)")
    quantization: Literal["none", "int8", "int4", "nf4"] = option(
        "none", "decoder linears of the loaded model weight-only: none | int8 | int4 | nf4 (QLoRA with "
                "train.trainable.llm=lora or frozen; final/ holds merged full-precision weights)")
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"config key 'model.preset': unknown preset {self.preset!r} (known: "
                              f"{', '.join(PRESETS)})")


open_section(ModelArgs, target=MFRSVLMConfig, shorthand="preset")


@dataclass
class TrainRecipeConfig:
    """Everything the training recipe reads."""

    output_dir: str = option("runs/mf_rsvlm_tiny", "where metrics, checkpoints, final/ and plots go")
    seed: int = option(0, "seed of initialisation, data order and every RNG", ge=0)
    max_steps: int = option(640, "optimizer steps to run; 0 = train.epochs full epochs", ge=0)
    save_every: int = option(160, "checkpoint every N optimizer steps (0 = only at the end)", ge=0)
    keep_last: int = option(2, "keep the newest K checkpoints (0 = all)", ge=0)
    resume: str = option("auto", "auto (newest complete checkpoint, if any) | none | PATH of a step_N folder")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto | cpu | cuda")
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", ge=0)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    model: ModelArgs = field(default_factory=ModelArgs)


SCHEMA = describe(TrainRecipeConfig)
"""Every key of the training recipe (dotted) → its `rsfuse.recipes.config.Option` (type, default, doc, range)."""

USAGE = """usage: mf_rsvlm_train.py [--config FILE] [--debug] [key=value ...]

--debug (or RSFUSE_DEBUG=1) shows the traceback of an expected error (bad data, configuration or checkpoint), which
otherwise is one line naming the file, sample or key, with exit status 2.

Without arguments: the embedded default (synthetic data, sentencepiece tokenizer, tiny MF-RSVLM on the CPU, then a
generation evaluation on the synthetic test split). With data.json given, data.val_json and data.test_json default to
none. Keys (dotted; model.* also takes MFRSVLMConfig fields):"""


def load_config(path=None, overrides: Sequence[str] = ()) -> TrainRecipeConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``key=value`` overrides."""
    return _load(TrainRecipeConfig, path, overrides)


def parse_args(argv: Sequence[str]) -> TrainRecipeConfig | None:
    """``[--config FILE] [key=value ...]``; None after printing ``--help``."""
    return _parse(TrainRecipeConfig, argv, USAGE)
