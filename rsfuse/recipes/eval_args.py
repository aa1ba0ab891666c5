"""The evaluation recipe's configuration: one typed dataclass read by `rsfuse.recipes.config` (the training recipe's
loader: YAML file + ``key=value`` overrides, unknown keys, wrong types and out-of-range values refused by name).

``python recipes/mf_rsvlm_eval.py --help`` prints every key with its doc, default and range, generated from the fields
below, followed by the registered tasks and their protocols.
"""

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from rsfuse.eval.tasks import EvalTask, get_task, task_protocols
from rsfuse.options import DEFAULT_TEMPLATE
from rsfuse.recipes.config import ConfigError, help_text as _help_text, load_config, split_config_argv, option

__all__ = ["EvalConfig", "TOO_LONG_POLICIES", "USAGE", "load_eval_config", "parse_eval_args", "help_text", "task_of"]

TOO_LONG_POLICIES = ("count", "refuse")
TooLong = Literal["count", "refuse"]


def task_of(name: str) -> EvalTask:
    """The registered task ``name``, or `ConfigError` naming the key and the known tasks."""
    try:
        return get_task(name)
    except KeyError as error:
        raise ConfigError(f"config key 'task': {error.args[0]}") from None


@dataclass
class EvalConfig:
    """Evaluate a model folder on one benchmark (every key is a top-level ``key=value``)."""

    task: str = option("synthetic", "which benchmark (a name in rsfuse.eval.TASKS; listed below)")
    model: str = option("", "model folder (anything MFRSVLM.from_pretrained reads) or a Hub repository id")
    revision: str = option("", "Hub revision of model (branch, tag or commit; '' = main)")
    quantization: Literal["none", "int8", "int4", "nf4"] = option(
        "none", "decoder linears weight-only: none | int8 (torchao) | int4 (torchao, CUDA) | nf4 (bitsandbytes)")
    tokenizer: str = option("", "tokenizer folder ('' = the model folder)")
    data: str = option("", "annotation file (or folder for cls / rsvqa_lr releases)")
    image_root: str = option("", "root of the image paths ('' = the reader's default, usually the data file's "
                                 "folder)")
    split: str = option("test", "split for the caption (Karpathy) and rsvqa_lr (release folder) readers")
    output_dir: str = option("runs/eval", "where predictions.jsonl, metrics.json and metrics.md go")
    batch_size: int = option(16, "prompts per generate call", ge=1)
    max_new_tokens: int = option(32, "generation budget per answer", ge=1)
    limit: int = option(0, "evaluate the first N records only (0 = all)", ge=0)
    protocol: str = option("", "scoring protocol where a task has several ('' = the task's default)")
    template: str = option(DEFAULT_TEMPLATE, "conversation template of the prompts")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto | cpu | cuda")
    dtype: Literal["fp32", "bf16", "fp16"] = option("fp32", "model dtype: fp32 | bf16 | fp16")
    fingerprint_weights: Literal["stat", "content"] = option(
        "stat", "how predictions.jsonl identifies the weights: stat (sizes and modification times) | content (hash "
                "every byte)")
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", ge=0)
    skip_bad: bool = option(False, "skip and count records whose image cannot be read (else stop, naming the file, "
                                   "after saving every finished answer)")
    too_long: TooLong = option("count", "records whose prompt + max_new_tokens exceed the decoder's "
                                        "max_position_embeddings: count (skip, report) | refuse (stop before "
                                        "generating)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        from rsfuse.llm.templates import TEMPLATES

        if self.template not in TEMPLATES:
            raise ConfigError(f"config key 'template': unknown conversation template {self.template!r} "
                              f"(choose from {', '.join(sorted(TEMPLATES))})")
        allowed = task_of(self.task).protocols
        if self.protocol and self.protocol not in allowed:
            raise ConfigError(f"config key 'protocol': {self.protocol!r} is not a protocol of task {self.task!r} "
                              f"(choose from {', '.join(allowed)})")

    def __getitem__(self, key: str) -> Any:
        """``config["batch_size"]``: the mapping-style access of the former dict configuration."""
        if key not in self.__dataclass_fields__:
            raise KeyError(f"unknown eval config key {key!r}")
        return getattr(self, key)


USAGE = """usage: mf_rsvlm_eval.py [--config FILE] [key=value ...]

Evaluate a model folder on one benchmark: task=... model=DIR data=FILE [image_root=DIR] output_dir=DIR.
Keys:
"""

_UNKNOWN = "unknown config key"


def load_eval_config(path=None, overrides: Sequence[str] = ()) -> EvalConfig:
    """Defaults < YAML file at ``path`` < ``key=value`` overrides; unknown keys and bad values raise `ConfigError`."""
    try:
        return load_config(EvalConfig, path, overrides)
    except ConfigError as error:
        message = str(error)
        if message.startswith(_UNKNOWN):  # name the recipe whose key it is not
            raise ConfigError("unknown eval config key" + message[len(_UNKNOWN):]) from None
        raise


def help_text() -> str:
    """The keys (generated from `EvalConfig`'s fields) and the registered tasks with their protocols."""
    lines = [_help_text(EvalConfig, USAGE), "\ntasks (protocols, the first is the default):"]
    for name in task_protocols:
        task = get_task(name)
        lines.append(f"  {name:16s} {task.summary} [{', '.join(task.protocols)}]")
    return "\n".join(lines)


def parse_eval_args(argv: Sequence[str]) -> EvalConfig | None:
    """``[--config FILE] [key=value ...]``; None after printing help for ``-h`` / ``--help``."""
    parsed = split_config_argv(argv, help_text())
    return None if parsed is None else load_eval_config(*parsed)
