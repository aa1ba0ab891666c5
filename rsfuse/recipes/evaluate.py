"""MF-RSVLM evaluation recipe (``rsfuse eval`` / ``python recipes/mf_rsvlm_eval.py [--config FILE] [key=value ...]``).

What it supports:

- **Tasks** (readers in `rsfuse.eval.tasks`, scorers in `rsfuse.eval`): ``vrsbench_vqa`` (protocol ``official`` or
  ``lenient``), ``vrsbench_cap`` and ``caption`` (protocol ``coco`` or ``compat``; ``auto`` = coco when Java runs,
  else compat), ``cls``, ``rsvqa_lr``, ``grounding``, ``synthetic``. Every number in ``metrics.json`` /
  ``metrics.md`` sits under the protocol that produced it.
- **Generation**: batched, greedy, KV-cached (`MFRSVLM.generate`), prompts left-padded; a tqdm progress bar.
- **Resume**: each batch's predictions are appended to ``output_dir/predictions.jsonl`` and flushed; a rerun skips
  the ids already there. A file written for another task, model or data file is refused (the error names the file
  and the differing field); a torn last line (a kill mid-write) is dropped.
- **Outputs**: ``predictions.jsonl``, ``metrics.json`` (task, model, data, sample count and the scorer's result with
  its ``protocol``), ``metrics.md`` (the same as a markdown table, also printed).
- **In-process use**: `evaluate(model, tokenizer, task, records, ...)` (what the training recipe can call after
  training) and `generate_predictions(...)`.

Keys (``key=value`` on the command line, or a YAML file with ``--config``): see `EVAL_SCHEMA` or ``--help``.
"""

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# The training recipe's config machinery: same key=value parsing and type coercion rules.
from rsfuse.recipes.config import ConfigError, Field, _coerce, config_entries, split_config_argv

__all__ = [
    "EVAL_SCHEMA",
    "TASK_PROTOCOLS",
    "PredictionsMismatchError",
    "EvalConfig",
    "load_eval_config",
    "parse_eval_args",
    "read_task",
    "generate_predictions",
    "score",
    "evaluate",
    "run",
    "main",
]

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
EXIT_CONFIG = 2
EXIT_MISMATCH = 4

# Protocols a task can be scored under; the first is the default ("auto" is resolved at scoring time).
TASK_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "vrsbench_vqa": ("official", "lenient"),
    "vrsbench_cap": ("auto", "coco", "compat"),
    "caption": ("auto", "coco", "compat"),
    "cls": ("rseval",),
    "rsvqa_lr": ("rseval",),
    "grounding": ("iou",),
    "synthetic": ("synthetic",),
}

EVAL_SCHEMA: dict[str, Field] = {
    "task": Field(str, "synthetic", "which benchmark", choices=tuple(TASK_PROTOCOLS)),
    "model": Field(str, "", "model folder (anything MFRSVLM.from_pretrained reads)"),
    "tokenizer": Field(str, "", "tokenizer folder ('' = the model folder)"),
    "data": Field(str, "", "annotation file (or folder for cls / rsvqa_lr releases)"),
    "image_root": Field(str, "", "root of the image paths ('' = the reader's default, usually the data file's folder)"),
    "split": Field(str, "test", "split for the caption (Karpathy) and rsvqa_lr (release folder) readers"),
    "output_dir": Field(str, "runs/eval", "where predictions.jsonl, metrics.json and metrics.md go"),
    "batch_size": Field(int, 16, "prompts per generate call"),
    "max_new_tokens": Field(int, 32, "generation budget per answer"),
    "limit": Field(int, 0, "evaluate the first N records only (0 = all)"),
    "protocol": Field(str, "", "scoring protocol where a task has several ('' = the task's default)"),
    "template": Field(str, "vicuna_v1", "conversation template of the prompts"),
    "device": Field(str, "auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda")),
    "dtype": Field(str, "fp32", "model dtype: fp32 | bf16 | fp16", choices=("fp32", "bf16", "fp16")),
    "num_threads": Field(int, 0, "torch CPU threads (0 = torch's default)"),
    "progress": Field(bool, True, "show a progress bar"),
}


class PredictionsMismatchError(ValueError):
    """An existing predictions file was written for another task / model / data file."""


# ---------------------------------------------------------------------------------------------------- config


class EvalConfig(dict):
    """Validated evaluation settings (schema key -> typed value)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(f"unknown eval config key {key!r}")
        return super().__getitem__(key)


def _apply(values: dict, key: str, value: Any, origin: str) -> None:
    import difflib

    if key not in EVAL_SCHEMA:
        close = difflib.get_close_matches(key, list(EVAL_SCHEMA), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" (in {origin})" if origin else ""
        raise ConfigError(f"unknown eval config key {key!r}{where}{hint}")
    values[key] = _coerce(key, value, EVAL_SCHEMA[key], origin)


def load_eval_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> EvalConfig:
    """Defaults < YAML file at ``path`` < ``key=value`` overrides; unknown keys and bad values raise `ConfigError`."""
    values = {key: field.default for key, field in EVAL_SCHEMA.items()}
    for key, value, origin in config_entries(path, overrides):
        _apply(values, key, value, origin)
    config = EvalConfig(values)
    _validate(config)
    return config


def _validate(config: EvalConfig) -> None:
    task = config["task"]
    allowed = TASK_PROTOCOLS[task]
    if config["protocol"] and config["protocol"] not in allowed:
        raise ConfigError(f"config key 'protocol': {config['protocol']!r} is not a protocol of task {task!r} "
                          f"(choose from {', '.join(allowed)})")
    for key in ("batch_size", "max_new_tokens"):
        if config[key] < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {config[key]}")
    if config["limit"] < 0:
        raise ConfigError(f"config key 'limit' must be >= 0, got {config['limit']}")


USAGE = """usage: mf_rsvlm_eval.py [--config FILE] [key=value ...]

Evaluate a model folder on one benchmark: task=... model=DIR data=FILE [image_root=DIR] output_dir=DIR.
Keys:
"""


def help_text() -> str:
    lines = [USAGE]
    for key, field in EVAL_SCHEMA.items():
        lines.append(f"  {key:16s} {field.help} [default: {field.default!r}]")
    lines.append("\nprotocols per task: " + "; ".join(f"{t}: {', '.join(p)}" for t, p in TASK_PROTOCOLS.items()))
    return "\n".join(lines)


def parse_eval_args(argv: Sequence[str]) -> EvalConfig | None:
    """``[--config FILE] [key=value ...]``; None after printing help for ``-h`` / ``--help``."""
    parsed = split_config_argv(argv, help_text())
    return None if parsed is None else load_eval_config(*parsed)


# ---------------------------------------------------------------------------------------------------- records


def read_task(task: str, data: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
              split: str = "test") -> list[dict]:
    """Records of ``task`` from ``data`` through the eval engineer's reader (uniform call for every task)."""
    from rsfuse.eval import tasks as readers

    if task not in TASK_PROTOCOLS:
        raise ConfigError(f"unknown task {task!r} (known: {', '.join(TASK_PROTOCOLS)})")
    root = image_root or None
    if task in ("vrsbench_vqa", "vrsbench_cap"):
        if root is None:
            root = Path(data).parent / "Images_val"
        return getattr(readers, task)(data, root)
    if task == "caption":
        if root is None:
            root = Path(data).parent / "images"
        return readers.caption(data, root, split=split)
    if task == "cls":
        return readers.cls(data, image_root=root)
    if task == "rsvqa_lr":
        return readers.rsvqa_lr(data, split=split, image_root=root)
    return getattr(readers, task)(data, root)


def _check_ids(records: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for index, record in enumerate(records):
        if "id" not in record or "prompt" not in record or "image_path" not in record:
            raise ValueError(f"record {index}: needs 'id', 'prompt' and 'image_path' (has {sorted(record)})")
        identifier = str(record["id"])
        if identifier in seen:
            raise ValueError(f"record {index}: id {identifier!r} appears twice; resuming needs unique ids")
        seen.add(identifier)


# ---------------------------------------------------------------------------------------------------- generation


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


def _decode(tokens: list[int], tokenizer, eos_id: int) -> str:
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return tokenizer.decode(tokens).strip()


@torch.no_grad()
def generate_predictions(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    template: str = "vicuna_v1",
    progress: bool = False,
) -> Iterator[list[tuple[Mapping[str, Any], str]]]:
    """Yield ``[(record, prediction), ...]`` one batch at a time: greedy, KV-cached, left-padded prompts."""
    from rsfuse.data import ImageProcessor, load_image
    from rsfuse.llm.templates import build_prompt, tokenize_prompt

    processor = ImageProcessor(model.config.input_size)
    device = model.device
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="eval", unit="q", file=sys.stderr)
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            prompts = [tokenize_prompt(build_prompt(template, str(record["prompt"])), tokenizer) for record in chunk]
            input_ids, attention_mask = _left_padded(prompts, tokenizer.pad_id)
            pixels = torch.stack([processor(load_image(record["image_path"])) for record in chunk])
            new_tokens = model.generate(
                pixels.to(device=device, dtype=model.dtype),
                input_ids.to(device),
                attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_id,
            )
            yield [(record, _decode(tokens, tokenizer, tokenizer.eos_id))
                   for record, tokens in zip(chunk, new_tokens.tolist())]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------------- scoring


def _resolve_protocol(task: str, protocol: str | None) -> str:
    allowed = TASK_PROTOCOLS[task]
    protocol = protocol or allowed[0]
    if protocol not in allowed:
        raise ValueError(f"task {task!r} has no protocol {protocol!r} (choose from {', '.join(allowed)})")
    if protocol == "auto":
        from rsfuse.eval import java_available

        protocol = "coco" if java_available()[0] else "compat"
    return protocol


def score(task: str, records: Sequence[Mapping[str, Any]], *, protocol: str | None = None) -> dict:
    """The task's scorer on records that carry ``prediction``; the result names its ``protocol``."""
    from rsfuse import eval as metrics

    protocol = _resolve_protocol(task, protocol)
    if task == "vrsbench_vqa":
        return metrics.vrsbench_vqa_score(records, protocol=protocol)
    if task in ("vrsbench_cap", "caption"):
        predictions = {str(record["id"]): str(record["prediction"]) for record in records}
        references = {str(record["id"]): list(record["answers"]) for record in records}
        return metrics.caption_scores(predictions, references, protocol=protocol)
    if task == "cls":
        return metrics.classification_scores(records)
    if task == "rsvqa_lr":
        return metrics.rsvqa_lr_scores(records)
    if task == "grounding":
        return metrics.grounding_scores(records)
    if task == "synthetic":
        return metrics.synthetic_scores(records)
    raise ValueError(f"unknown task {task!r}")


# ---------------------------------------------------------------------------------------------------- predictions file


def _identity(task: str, model_name: str, data_name: str) -> dict[str, str]:
    return {"task": task, "model": model_name, "data": data_name}


def read_predictions(path: Path, identity: Mapping[str, str]) -> dict[str, str]:
    """id -> prediction from an existing ``predictions.jsonl``; refuses a file written for another identity.

    A last line without its newline (a kill mid-write) is dropped and the file truncated to the last whole line.
    """
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw):
        with path.open("r+b") as handle:
            handle.truncate(keep)
    predictions: dict[str, str] = {}
    for number, line in enumerate(raw[:keep].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from None
        for field, expected in identity.items():
            if entry.get(field) != expected:
                raise PredictionsMismatchError(
                    f"{path}: line {number} was written for {field} {entry.get(field)!r}, but this run evaluates "
                    f"{field} {expected!r}; use another output_dir or delete the file"
                )
        predictions[str(entry["id"])] = str(entry["prediction"])
    return predictions


def _json_ready(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    return value


def evaluate(
    model,
    tokenizer,
    task: str,
    records: Sequence[Mapping[str, Any]],
    *,
    protocol: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    template: str = "vicuna_v1",
    predictions_path: str | os.PathLike | None = None,
    identity: Mapping[str, str] | None = None,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Generate answers for ``records`` (reader output) and score them; returns the scorer's result.

    With ``predictions_path`` every batch is appended to that JSONL file and flushed, and ids already in it are not
    generated again (their stored predictions are used). ``identity`` (task / model / data names stored on each line)
    guards against mixing runs: a file written for another identity raises `PredictionsMismatchError`.
    ``on_batch(n_done)`` is called after each batch (progress hooks, tests).
    """
    if task not in TASK_PROTOCOLS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASK_PROTOCOLS)})")
    records = list(records)
    if not records:
        raise ValueError(f"evaluate: no records for task {task!r}")
    _check_ids(records)
    protocol = _resolve_protocol(task, protocol)
    identity = dict(identity or _identity(task, "<in-memory model>", "<records>"))
    done: dict[str, str] = {}
    handle = None
    if predictions_path is not None:
        path = Path(predictions_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        done = read_predictions(path, identity)
        handle = path.open("a", encoding="utf-8")
    pending = [record for record in records if str(record["id"]) not in done]
    was_training = model.training
    model.eval()
    try:
        for batch in generate_predictions(model, tokenizer, pending, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, template=template, progress=progress):
            for record, prediction in batch:
                done[str(record["id"])] = prediction
                if handle is not None:
                    handle.write(json.dumps({**identity, "id": str(record["id"]), "prediction": prediction}) + "\n")
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
            if on_batch is not None:
                on_batch(len(done))
    finally:
        if handle is not None:
            handle.close()
        model.train(was_training)
    scored = [{**record, "prediction": done[str(record["id"])]} for record in records]
    return score(task, scored, protocol=protocol)


# ---------------------------------------------------------------------------------------------------- the recipe


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda asked but no CUDA device is available")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(config: EvalConfig) -> dict:
    """Load the model and the task's records, evaluate (resuming), write ``metrics.json`` / ``metrics.md``."""
    from rsfuse.eval import metrics_to_markdown
    from rsfuse.llm.tokenizer import Tokenizer
    from rsfuse.model import MFRSVLM

    for key in ("model", "data"):
        if not config[key]:
            raise ConfigError(f"config key {key!r} is required (e.g. {key}=PATH)")
    model_dir = Path(config["model"])
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"config key 'model': {model_dir} holds no config.json (not a model folder)")
    tokenizer_dir = Path(config["tokenizer"] or model_dir)
    if not (tokenizer_dir / "tokenizer.model").is_file():
        raise ConfigError(f"config key 'tokenizer': {tokenizer_dir} holds no tokenizer.model")
    if config["num_threads"] > 0:
        torch.set_num_threads(config["num_threads"])
    task = config["task"]
    records = read_task(task, config["data"], config["image_root"] or None, split=config["split"])
    if config["limit"] > 0:
        records = records[: config["limit"]]
    output_dir = Path(config["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    identity = _identity(task, str(model_dir.resolve()), str(Path(config["data"]).resolve()))
    device = _device(config["device"])
    model = MFRSVLM.from_pretrained(model_dir, dtype=DTYPES[config["dtype"]], device=device)
    model.requires_grad_(False)
    model.enable_vision_feature_cache()  # questions about the same image encode it once
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    result = evaluate(
        model,
        tokenizer,
        task,
        records,
        protocol=config["protocol"] or None,
        batch_size=config["batch_size"],
        max_new_tokens=config["max_new_tokens"],
        template=config["template"],
        predictions_path=output_dir / PREDICTIONS_FILE,
        identity=identity,
        progress=config["progress"],
    )
    summary = {**identity, "samples": len(records), "template": config["template"], "result": _json_ready(result)}
    (output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2))
    title = f"{task}: {model_dir.name} ({len(records)} samples)"
    table = metrics_to_markdown(result, title=title)
    (output_dir / METRICS_MARKDOWN).write_text(table)
    print(table)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; exit status 0, 2 (configuration error), 4 (predictions file of another run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_eval_args(argv)
        if config is None:
            return 0
        run(config)
    except ConfigError as error:
        print(f"rsfuse eval: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except PredictionsMismatchError as error:
        print(f"rsfuse eval: {error}", file=sys.stderr)
        return EXIT_MISMATCH
    return 0


if __name__ == "__main__":
    sys.exit(main())
