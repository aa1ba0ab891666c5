"""MF-RSVLM evaluation recipe (``rsfuse eval`` / ``python recipes/mf_rsvlm_eval.py [--config FILE] [key=value ...]``).

What it supports:

- **Tasks**: the registry of `rsfuse.eval.tasks.EvalTask` objects (reader, protocols, scorer; `register_task` adds
  one without touching this recipe). Built in: ``vrsbench_vqa`` (protocol ``official`` or
  ``lenient``), ``vrsbench_cap`` and ``caption`` (protocol ``coco`` or ``compat``; ``auto`` = coco when Java runs,
  else compat), ``cls``, ``rsvqa_lr``, ``grounding``, ``synthetic``. Every number in ``metrics.json`` /
  ``metrics.md`` sits under the protocol that produced it.
- **Generation** (`rsfuse.eval.generation`): greedy, KV-cached (`MFRSVLM.generate`), prompts batched by token length
  (longest first) through ``MFRSVLMProcessor`` (the input path of ``predict`` and ``serve``), answers put back in
  record order; a tqdm progress bar.
- **Several processes** (`rsfuse.eval.ranks`): under ``torchrun --nproc_per_node N`` (a gloo group for the
  bookkeeping, one GPU per process when there are GPUs) the pending records are dealt round-robin by length to the processes; each appends to
  ``predictions.rank{r}.jsonl`` and rank 0 folds them into one ``predictions.jsonl`` in record order.
- **Resume**: each batch's predictions are appended and flushed; a rerun (with any number of processes) skips the ids
  already answered, in ``predictions.jsonl`` or in an interrupted sharded run's rank files; a torn last line (a kill
  mid-write) is dropped.
- **Fingerprints**: every line records task, model, data and a fingerprint of what changes an answer (weights by
  sizes+mtimes or by content, ``fingerprint_weights``; tokenizer; data file content; every image's content (hashed
  once, cached by size+mtime in ``.image_digests.json``); ``max_new_tokens``, template, dtype, split, image root; see `rsfuse.eval.fingerprint`). A file from a run that differs in any of them is refused
  with one line naming each differing field (exit status 2), never mixed in.
- **Outputs**: ``predictions.jsonl``, ``metrics.json`` (task, model, data, sample count and the scorer's result with
  its ``protocol``), ``metrics.md`` (the same as a markdown table, also printed).
- **In-process use**: `evaluate(model, tokenizer, task, records, ...)` (what the training recipe can call after
  training) and `generate_predictions(...)`.

Keys (``key=value`` on the command line, or a YAML file with ``--config``): `rsfuse.recipes.eval_args.EvalConfig`,
or ``--help``.
"""

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rsfuse.checkpoints.hub import resolve_model
from rsfuse.checkpoints.io import CheckpointError
from rsfuse.eval.generation import (
    BAD_IMAGE,
    TOO_LONG,
    EvalInputError,
    answerable,
    context_limit,
    decoder_length,
    encode_prompt,
    generate_batches,
    generate_predictions,
    length_order,
)
from rsfuse.eval.predictions import PREDICTIONS_FILE, PredictionsMismatchError, mismatch_reason, read_predictions
from rsfuse.eval.ranks import RankGroup, capture, finish, launch, picklable
from rsfuse.eval.tasks import get_task, task_protocols
from rsfuse.options import DEFAULT_TEMPLATE
from rsfuse.recipes.config import ConfigError, check_output_dir
from rsfuse.train.lock import RunLock, RunLockedError
from rsfuse.recipes.eval_args import TOO_LONG_POLICIES, EvalConfig, load_eval_config, parse_eval_args, task_of

__all__ = [
    "TASK_PROTOCOLS",
    "EvalInputError",
    "PredictionsMismatchError",
    "EvalConfig",
    "load_eval_config",
    "parse_eval_args",
    "read_task",
    "generate_predictions",
    "encode_prompt",
    "length_order",
    "decoder_length",
    "context_limit",
    "score",
    "evaluate",
    "run",
    "main",
]

METRICS_FILE = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
UNANSWERED_FILE = "unanswered.jsonl"
EXIT_CONFIG = 2
EXIT_MISMATCH = 2  # a predictions file of another run: an expected error like any other (one line, status 2)

# Protocols each registered task can be scored under (a live view of the task registry); the first is the default.
TASK_PROTOCOLS = task_protocols

# ---------------------------------------------------------------------------------------------------- records


def read_task(task: str, data: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
              split: str = "test", check_images: bool = True) -> list[dict]:
    """Records of ``task`` from ``data`` through the registered task's reader (`rsfuse.eval.tasks.get_task`)."""
    return task_of(task).read(data, image_root or None, split=split, check_images=check_images)


def _unanswered_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in counts.items())


def _check_ids(records: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for index, record in enumerate(records):
        if "id" not in record or "prompt" not in record or "image_path" not in record:
            raise ValueError(f"record {index}: needs 'id', 'prompt' and 'image_path' (has {sorted(record)})")
        identifier = str(record["id"])
        if identifier in seen:
            raise ValueError(f"record {index}: id {identifier!r} appears twice; resuming needs unique ids")
        seen.add(identifier)


# ---------------------------------------------------------------------------------------------------- scoring


def score(task: str, records: Sequence[Mapping[str, Any]], *, protocol: str | None = None) -> dict:
    """The task's scorer on records that carry ``prediction``; the result names its ``protocol``."""
    return get_task(task).score(records, protocol)


# ---------------------------------------------------------------------------------------------------- evaluation


def _identity(task: str, model_name: str, data_name: str) -> dict[str, str]:
    return {"task": task, "model": model_name, "data": data_name}


def evaluate(
    model,
    tokenizer,
    task: str,
    records: Sequence[Mapping[str, Any]],
    *,
    protocol: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    template: str = DEFAULT_TEMPLATE,
    predictions_path: str | os.PathLike | None = None,
    identity: Mapping[str, str] | None = None,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    report: dict | None = None,
    skip_bad: bool = False,
    too_long: str = "count",
) -> dict:
    """Generate answers for ``records`` (reader output) and score them; returns the scorer's result.

    Prompts are batched by token length (longest first); answers are put back in the order of ``records``.
    With ``predictions_path`` every batch is appended to that JSONL file and flushed, and ids already in it are not
    generated again (their stored predictions are used). ``identity`` (task / model / data names stored on each line)
    guards against mixing runs: a file written for another identity raises `PredictionsMismatchError`.
    ``on_batch(n_done)`` is called after each batch (progress hooks, tests).

    Sharded (``world_size`` > 1, a started process group, every rank calling with the same records): the pending
    records, sorted by length, are dealt round-robin to the ranks; rank ``r`` appends to ``predictions.rank{r}.jsonl``
    and rank 0 folds the rank files into ``predictions_path`` (record order, each id once) before and after
    generating, so an interrupted sharded run resumes exactly with any number of processes. Every rank returns the
    same result. An error on any rank is raised on every rank after the answers finished so far are saved.

    Records the model cannot answer are not generated, not written and not scored (a rerun tries them again):
    prompts whose decoder length plus ``max_new_tokens`` exceeds ``max_position_embeddings`` (``too_long="count"``;
    ``"refuse"`` raises `EvalInputError` before generating anything), and with ``skip_bad`` unreadable images
    (without it the first one raises `EvalInputError` naming file and record, after every finished answer is saved).
    If nothing can be answered, `EvalInputError`.

    ``report``, when given, is filled with the run's counts: ``reused`` (answers found in the file), ``generated``,
    ``generated_per_rank``, ``scored``, ``unanswered`` (reason -> count) and ``unanswered_records`` (id, reason,
    detail).
    """
    from rsfuse.eval.predictions import PredictionWriter, consolidate, rank_file

    evaluation = get_task(task)
    if too_long not in TOO_LONG_POLICIES:
        raise ValueError(f"too_long must be one of {', '.join(TOO_LONG_POLICIES)}, got {too_long!r}")
    records = list(records)
    if not records:
        raise ValueError(f"evaluate: no records for task {task!r}")
    _check_ids(records)
    protocol = evaluation.resolve_protocol(protocol)
    group = RankGroup(rank, world_size)
    identity = dict(identity or _identity(task, "<in-memory model>", "<records>"))
    ids = [str(record["id"]) for record in records]
    path = Path(predictions_path) if predictions_path is not None else None

    # 1. What is answered already (rank 0 folds an interrupted sharded run's rank files in first).
    done: dict[str, str] = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        done, error = capture(lambda: consolidate(path, identity, ids)) if group.is_main else ({}, None)
        group.raise_first(group.gather(picklable(error)))
        if not group.is_main:
            done = read_predictions(path, identity, repair=False)

    # 2. This process's share of the rest, batched by prompt length.
    pending = [record for record in records if str(record["id"]) not in done]
    fitting, unanswered = answerable(pending, model, tokenizer, template=template, max_new_tokens=max_new_tokens,
                                     refuse=too_long == "refuse")
    items = fitting[group.rank :: group.world_size]

    # 3. Generate, appending each batch to this process's file.
    answers: dict[str, str] = {}
    bad_images: list[dict] = []
    writer = None
    if path is not None:
        writer = PredictionWriter(path if group.world_size == 1 else rank_file(path, group.rank), identity)
    was_training = model.training
    model.eval()

    def generate_all() -> None:
        with torch.no_grad():
            for batch in generate_batches(model, tokenizer, items, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, template=template,
                                          progress=progress and group.is_main, skip_bad=skip_bad,
                                          skipped=bad_images):
                finished = [(str(record["id"]), prediction) for record, prediction in batch]
                answers.update(finished)
                if writer is not None:
                    writer.write(finished)
                if on_batch is not None:
                    on_batch(len(done) + len(answers))

    try:
        _, error = capture(generate_all)
    finally:
        if writer is not None:
            writer.close()
        model.train(was_training)

    # 4. Every rank's answers to every rank; rank 0 leaves one file in record order; errors raised after that.
    reused = len(done)
    gathered = group.gather((answers, bad_images, picklable(error)))
    for rank_answers, rank_bad, _ in gathered:
        done.update(rank_answers)
        unanswered += rank_bad
    if report is not None:
        per_rank = [len(rank_answers) for rank_answers, _, _ in gathered]
        report.update(reused=reused, generated=sum(per_rank), generated_per_rank=per_rank)
    errors = [rank_error for _, _, rank_error in gathered]
    errors[group.rank] = error
    if path is not None:
        _, merge_error = capture(lambda: consolidate(path, identity, ids)) if group.is_main else (None, None)
        merged = group.gather(picklable(merge_error))
        errors = [first or second for first, second in zip(errors, merged)]
    group.raise_first(errors)

    # 5. Score once, in record order, what was answered.
    scored = [{**record, "prediction": done[str(record["id"])]} for record in records if str(record["id"]) in done]
    counts = {reason: sum(1 for entry in unanswered if entry["reason"] == reason) for reason in (TOO_LONG, BAD_IMAGE)}
    if report is not None:
        report.update(scored=len(scored), unanswered=counts, unanswered_records=unanswered)
    if not scored:
        raise EvalInputError(f"no record of task {task!r} could be answered ({_unanswered_text(counts)})")
    result, error = capture(lambda: evaluation.score(scored, protocol)) if group.is_main else (None, None)
    shared = group.broadcast((result, picklable(error)))
    if error is not None:
        raise error
    result, error = shared
    if error is not None:
        raise error
    return result


# ---------------------------------------------------------------------------------------------------- the recipe


def _device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda asked but no CUDA device is available")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _fingerprint(config: EvalConfig, model_dir: Path, tokenizer_dir: Path, records: Sequence[Mapping[str, Any]],
                 output_dir: Path, hub_revision: str | None = None) -> dict[str, Any]:
    """What changes an answer (`rsfuse.eval.fingerprint`): weights (and the Hub commit they came from), the
    quantization scheme, tokenizer, data, the records' image content (digests cached in the output folder),
    generation and input settings."""
    from rsfuse.eval.fingerprint import IMAGE_DIGEST_CACHE, run_fingerprint

    image_root = str(Path(config.image_root).resolve()) if config.image_root else ""
    settings = {"max_new_tokens": config.max_new_tokens, "template": config.template, "dtype": config.dtype,
                "decoding": "greedy", "split": config.split, "image_root": image_root,
                "quantization": config.quantization, "hub_revision": hub_revision or ""}
    images = [record["image_path"] for record in records if record.get("image_path") is not None]
    return run_fingerprint(model_dir=model_dir, data=config.data, tokenizer_dir=tokenizer_dir,
                           weights=config.fingerprint_weights, settings=settings, images=images,
                           image_cache=output_dir / IMAGE_DIGEST_CACHE)


def _lock_output(output_dir: Path):
    """``(lock, None)``, or ``(None, message)`` when another live evaluation holds ``output_dir``
    (`rsfuse.train.lock.RunLock`: two runs must not interleave one ``predictions.jsonl``)."""
    try:
        return RunLock(output_dir, kind="evaluation").acquire(), None
    except RunLockedError as error:
        return None, str(error)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(config: EvalConfig) -> dict:
    """Load the model and the task's records, evaluate (resuming), write ``metrics.json`` / ``metrics.md``."""
    from rsfuse.eval.report import json_ready, metrics_to_markdown
    from rsfuse.llm.tokenizer import Tokenizer
    from rsfuse.model import MFRSVLM

    check_output_dir(config.output_dir)
    for key in ("model", "data"):
        if not getattr(config, key):
            raise ConfigError(f"config key {key!r} is required (e.g. {key}=PATH)")
    try:
        source = resolve_model(config.model, revision=config.revision or None)
    except CheckpointError as error:
        raise ConfigError(f"config key 'model': {error}") from None
    model_dir = source.path
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"config key 'model': {model_dir} holds no config.json (not a model folder)")
    tokenizer_dir = Path(config.tokenizer or model_dir)
    if not (tokenizer_dir / "tokenizer.model").is_file():
        raise ConfigError(f"config key 'tokenizer': {tokenizer_dir} holds no tokenizer.model")
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    task = config.task
    try:  # with skip_bad, a missing image is counted when it is loaded instead of refused here
        records = read_task(task, config.data, config.image_root or None, split=config.split,
                            check_images=not config.skip_bad)
    except (OSError, KeyError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise EvalInputError(error.args[0] if isinstance(error, KeyError) and error.args else str(error)) from None
    if not records:
        raise EvalInputError(f"{config.data}: no records for task {task!r}")
    all_records = records  # the image fingerprint covers every record: `limit` does not change an answer
    if config.limit > 0:
        records = records[: config.limit]
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank, world_size, local_rank, started = launch()
    counts: dict[str, Any] = {}
    lock = None
    try:
        group = RankGroup(rank, world_size)
        lock, busy = _lock_output(output_dir) if group.is_main else (None, None)
        busy = group.broadcast(busy)
        if busy is not None:  # another evaluation writes this folder: refused on every rank
            raise RunLockedError(busy)
        model_name = source.describe() if source.repo_id else str(model_dir.resolve())
        identity = {**_identity(task, model_name, str(Path(config.data).resolve())),
                    "fingerprint": group.shared(lambda: _fingerprint(config, model_dir, tokenizer_dir, all_records,
                                                                      output_dir, source.revision))}
        refusal = group.shared(lambda: mismatch_reason(output_dir / PREDICTIONS_FILE, identity))
        if refusal is not None:  # before minutes of model loading
            raise PredictionsMismatchError(refusal)
        device = _device(config.device, local_rank)
        tokenizer = Tokenizer.from_pretrained(tokenizer_dir)  # before the model: a bad file is named at once
        model = MFRSVLM.from_pretrained(model_dir, dtype=DTYPES[config.dtype], device=device,
                                        quantization=None if config.quantization == "none" else config.quantization)
        vocabulary = model.config.llm.vocab_size
        if tokenizer.vocab_size > vocabulary:
            raise ConfigError(
                f"config key 'tokenizer': {tokenizer_dir / 'tokenizer.model'} has {tokenizer.vocab_size} pieces, more "
                f"than the model's vocabulary of {vocabulary} ({model_dir / 'config.json'}); use the model's own "
                "tokenizer"
            )
        model.requires_grad_(False)
        model.enable_vision_feature_cache()  # questions about the same image encode it once
        result = evaluate(
            model,
            tokenizer,
            task,
            records,
            protocol=config.protocol or None,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            template=config.template,
            predictions_path=output_dir / PREDICTIONS_FILE,
            identity=identity,
            progress=config.progress,
            rank=rank,
            world_size=world_size,
            report=counts,
            skip_bad=config.skip_bad,
            too_long=config.too_long,
        )
    finally:
        if lock is not None:
            lock.release()
        finish(started)
    summary = {**identity, "samples": len(records), "scored": counts["scored"], "unanswered": counts["unanswered"],
               "template": config.template, "processes": world_size, "result": json_ready(result)}
    if rank != 0:
        return {**summary, "run": counts}
    per_rank = f" ({', '.join(map(str, counts['generated_per_rank']))} per process)" if world_size > 1 else ""
    print(f"[rsfuse eval] {counts['reused']} answers reused from {output_dir / PREDICTIONS_FILE}, "
          f"{counts['generated']} generated{per_rank}", file=sys.stderr)
    skipped = counts["unanswered_records"]
    if skipped:
        (output_dir / UNANSWERED_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in skipped))
        reasons = _unanswered_text(counts["unanswered"])
        print(f"[rsfuse eval] {len(skipped)} of {len(records)} records not answered ({reasons}); listed in "
              f"{output_dir / UNANSWERED_FILE}; first: {skipped[0]['id']!r}: {skipped[0]['detail']}", file=sys.stderr)
    elif (output_dir / UNANSWERED_FILE).exists():
        (output_dir / UNANSWERED_FILE).unlink()
    (output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2))
    title = f"{task}: {model_dir.name} ({len(records)} samples)"
    table = metrics_to_markdown(result, title=title)
    if skipped:
        table += (f"\nScored on {counts['scored']} of {len(records)} records; not answered: "
                  f"{_unanswered_text(counts['unanswered'])} (see {UNANSWERED_FILE}).\n")
    (output_dir / METRICS_MARKDOWN).write_text(table)
    print(table)
    return {**summary, "run": counts}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; exit status 0, or 2 with one line on stderr for an expected error (configuration, a
    predictions file of a run that answers differently)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_eval_args(argv)
        if config is None:
            return 0
        run(config)
    except ConfigError as error:
        print(f"rsfuse eval: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (PredictionsMismatchError, EvalInputError) as error:
        if os.environ.get("RSFUSE_DEBUG") == "1":
            raise
        if not getattr(error, "relayed", False) or os.environ.get("RANK", "0") == "0":
            print(f"rsfuse eval: {error}", file=sys.stderr)
        return EXIT_MISMATCH if isinstance(error, PredictionsMismatchError) else EXIT_CONFIG
    except KeyboardInterrupt:
        print("rsfuse eval: interrupted; every answer written so far is kept in predictions.jsonl (run it again "
              "to continue)", file=sys.stderr)
        return 130
    except OSError as error:
        if error.filename is None:  # not about a file the run reads or writes: a bug, keep the traceback
            raise
        return _report("rsfuse eval", error)
    except Exception as error:  # noqa: BLE001 - the expected kinds (checkpoint, data, lock) are one line
        from rsfuse.recipes.errors import expected_errors

        if not isinstance(error, expected_errors()):
            raise
        return _report("rsfuse eval", error)
    return 0


def _report(prog: str, error: BaseException) -> int:
    from rsfuse.recipes.errors import debug_requested, report_expected

    return report_expected(prog, error, debug=debug_requested())


if __name__ == "__main__":
    sys.exit(main())
