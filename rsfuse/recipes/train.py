"""MF-RSVLM training recipe (``rsfuse train`` / ``python recipes/mf_rsvlm_train.py [--config FILE] [key=value ...]``).

What it supports:

- **Configuration**: typed sections (`rsfuse.recipes.train_args`), YAML files and ``key=value`` overrides, ``--help``
  generated from the fields; ``model.*`` takes `MFRSVLMConfig` fields (``model.llm.hidden_size=128``),
  ``model.preset`` (`rsfuse.model.config.PRESETS`) and ``model.init_from`` (a folder `MFRSVLM.from_pretrained` reads).
- **Training modes** per part (``train.trainable.{vit,projector,injector,llm}``): ``frozen``, ``full`` or ``lora``
  (peft LoRA on the part's linear layers; merged before ``final/`` is written). Separate tower learning rate
  (``train.vit_lr``), AdamW, cosine schedule with linear warmup, gradient accumulation, clipping, gradient
  checkpointing, bf16 autocast on GPU (``train.dtype=auto``), fp32 on the CPU.
- **Exact resume**: ``checkpoints/step_N/`` holds model, optimizer, scheduler, data position and every RNG state,
  written atomically (newest ``keep_last`` kept); data order depends only on (seed, epoch); deterministic algorithms
  on the CPU. ``resume=auto`` after a SIGKILL at any moment gives weights bit-identical to an uninterrupted run on
  the CPU; a corrupt newest checkpoint falls back to the one before.
- **Loss normalisation**: every optimizer step minimises the mean token loss over the *global* batch.
- **Non-finite loss**: the run stops before the optimizer step, names the step and the last good checkpoint, and exits
  with status 3.
- **Several processes** (``torchrun``): gloo on CPU / nccl on GPU, FSDP2 ``fully_shard`` per decoder layer, tower
  block and injector, then the root; torch.distributed.checkpoint for model and optimizer state.
- **Outputs**: ``metrics.jsonl`` (one record per optimizer step), ``loss.png``, ``final/`` (`MFRSVLM.from_pretrained`
  loads it; tokenizer included), ``summary.json`` and, after training, ``eval_synthetic.json``: a greedy, KV-cached
  generation evaluation on ``data.test_json`` with a per-question-type accuracy table.
- **Embedded default** (no arguments): writes the synthetic benchmark to ``data/synthetic/`` if missing, trains a
  sentencepiece tokenizer on its training text, trains the tiny MF-RSVLM from scratch on the CPU and evaluates it.

The recipe reads top to bottom: `setup_model`, `setup_data`, `setup_optimizer`, `train`, `save_checkpoint`,
`evaluate`; the machinery is in `rsfuse.train` (loop, state, parts, set-up).
"""

import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from rsfuse.recipes.config import ConfigError, check_output_dir, save_config, to_dict
from rsfuse.recipes.train_args import TrainRecipeConfig, parse_args
from rsfuse.train.checkpointing import CheckpointSaveError, is_disk_full, list_checkpoints
from rsfuse.train.distributed import DistributedContext, full_state_dict, init_distributed, shard_model
from rsfuse.train.lock import RunLock
from rsfuse.train.loop import LoopOptions, NonFiniteLossError, Trainer, TrainingInterrupted
from rsfuse.train.metrics import plot_loss, read_metrics
from rsfuse.train.optim import build_optimizer, cosine_with_warmup, warmup_steps_for
from rsfuse.model.quantization import frozen_quantized_keys
from rsfuse.train.parts import configure_trainable, fsdp_units, merge_lora, part_of
from rsfuse.train.rng import seed_everything
from rsfuse.train.setup import (
    build_datasets,
    build_model_config,
    check_context_length,
    check_data,
    check_model_source_keys,
    check_resume_settings,
    load_tower_weights,
    prepare_synthetic_data,
    prepare_tokenizer,
    resume_candidates,
)
from rsfuse.train.state import CheckpointReadError

__all__ = [
    "main",
    "run",
    "TrainingRecipe",
    "evaluate_test_split",
    "format_accuracy_table",
]

EXIT_NON_FINITE = 3


class TrainingRecipe:
    """One training run: ``recipe.setup()`` then ``recipe.train()``, ``recipe.save_checkpoint()``,
    ``recipe.evaluate()`` (what `run` does)."""

    def __init__(self, config: TrainRecipeConfig, context: DistributedContext, device_type: str) -> None:
        self.config = config
        self.context = context
        self.device_type = device_type
        self.output_dir = Path(config.output_dir)
        self.summary: dict[str, Any] = {"output_dir": str(self.output_dir)}

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        config, context = self.config, self.context
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        if self.device_type == "cpu":
            torch.use_deterministic_algorithms(True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        check_resume_settings(config, self.output_dir, context)  # before recipe.yaml records the new settings
        if context.is_main:
            save_config(config, self.output_dir / "recipe.yaml")
        check_model_source_keys(config)
        prepare_synthetic_data(config, context)
        self.tokenizer = prepare_tokenizer(config, context, self.output_dir)
        seed_everything(config.seed)
        self.setup_model()
        self.setup_data()
        if context.is_distributed:
            shard_model(self.model, fsdp_units(self.model), context)
        self.setup_optimizer()

    def setup_model(self) -> None:
        """The model (from a preset, a checkpoint folder, or HF parts), its trainable parts, the optional frozen-tower
        feature cache and gradient checkpointing, on the run's device."""
        from rsfuse.model import MFRSVLM

        config, model_args = self.config, self.config.model
        if model_args.init_from or model_args.vision_from:
            quantization = None if model_args.quantization == "none" else model_args.quantization
            if quantization and self.context.is_distributed:
                raise ConfigError(f"model.quantization={quantization} trains in one process only (no FSDP of "
                                  "quantized weights); run without torchrun")
            model = self.load_source(quantization, self.context.device)
        else:
            model = MFRSVLM(build_model_config(config, self.tokenizer))
            if model_args.vision_weights:
                load_tower_weights(model, model_args.vision_weights)
        self.model_config = model.config
        if self.model_config.llm.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model vocabulary ({self.model_config.llm.vocab_size}) is smaller than the tokenizer's "
                              f"({self.tokenizer.vocab_size})")
        check_context_length(config, self.model_config)
        self.modes = configure_trainable(model, config.train.trainable, config.train.lora)
        self.feature_cache, self.feature_store = None, None
        if config.train.cache_vision_features:
            self.feature_cache = model.enable_vision_feature_cache()
            if config.train.feature_cache_dir:
                from rsfuse.model.feature_cache import feature_key

                self.feature_store = Path(config.train.feature_cache_dir) / f"{feature_key(model)}.safetensors"
        if config.train.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable()
        model.to(self.context.device)
        if self.feature_store is not None and self.feature_store.is_file():
            count = self.feature_cache.load(self.feature_store, self.context.device)
            if self.context.is_main:
                print(f"[rsfuse] reusing {count} images' tower features from {self.feature_store}", file=sys.stderr)
        self.model = model

    def load_source(self, quantization: str | None, device) -> "MFRSVLM":
        """The model of ``model.init_from`` (``from_pretrained``) or ``model.*_from`` (``from_parts``)."""
        from rsfuse.model import MFRSVLM

        model_args = self.config.model
        if model_args.init_from:
            return MFRSVLM.from_pretrained(model_args.init_from, quantization=quantization, device=device,
                                           **model_args.overrides)
        return MFRSVLM.from_parts(vision=model_args.vision_from, llm=model_args.llm_from or None,
                                  llava=model_args.llava_from or None, quantization=quantization, device=device,
                                  **model_args.overrides)

    def setup_data(self) -> None:
        """Training and validation sets, every sample checked before the first step."""
        self.train_set, self.val_set, self.collate = build_datasets(self.config.data, self.tokenizer,
                                                                    self.model_config)
        self.data_report = check_data(self.train_set, self.val_set, self.context)
        self.summary["data"] = self.data_report

    def setup_optimizer(self) -> None:
        """AdamW (separate tower learning rate), cosine schedule with warmup, the `Trainer`, and the resume point."""
        config, train, context = self.config, self.config.train, self.context
        options = LoopOptions(
            output_dir=self.output_dir, seed=config.seed, batch_size=train.batch_size, grad_accum=train.grad_accum,
            max_grad_norm=train.max_grad_norm, save_every=config.save_every, keep_last=config.keep_last,
            val_every=train.val_every, val_samples=train.val_samples, log_every=train.log_every,
            autocast_dtype=torch.bfloat16 if train.dtype == "bf16" or (train.dtype == "auto"
                                                                      and self.device_type == "cuda") else None,
            num_workers=config.data.num_workers,
        )
        steps_per_epoch = len(self.train_set) // (train.batch_size * train.grad_accum * context.world_size)
        options.total_steps = config.max_steps if config.max_steps > 0 else train.epochs * steps_per_epoch
        optimizer = build_optimizer(self.model.named_parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                    tower_lr=train.vit_lr, is_tower=lambda name: part_of(name) == "vit")
        scheduler = cosine_with_warmup(optimizer, total_steps=max(1, options.total_steps),
                                       warmup_steps=warmup_steps_for(options.total_steps, train.warmup_ratio))
        self.trainer = Trainer(
            model=self.model, optimizer=optimizer, scheduler=scheduler, train_dataset=self.train_set,
            collate=self.collate, options=options, context=context, val_dataset=self.val_set,
            snapshot=to_dict(config), lengths=self.train_set.lengths if config.data.group_by_length else None,
        )
        self.trainer.data_report = self.data_report
        self.resume_from = self._resume()

    def _resume(self) -> Path | None:
        trainer, context = self.trainer, self.context
        candidates = resume_candidates(self.config.resume, trainer.checkpoint_root)
        if self.config.resume == "none" and list_checkpoints(trainer.checkpoint_root):
            raise ConfigError(f"resume=none but {trainer.checkpoint_root} already holds checkpoints; use resume=auto "
                              "or another output_dir")
        for position, candidate in enumerate(candidates):
            try:
                trainer.load_checkpoint(candidate)
            except CheckpointReadError as error:
                if position + 1 == len(candidates) or context.is_distributed:
                    raise
                if context.is_main:
                    print(f"[rsfuse] {error}; falling back to {candidates[position + 1]}", file=sys.stderr)
                continue
            if context.is_main:
                print(f"[rsfuse] resumed from {candidate} (step {trainer.state.step})", file=sys.stderr)
            return candidate
        return None

    # ------------------------------------------------------------------------------------------------ training
    def train(self) -> None:
        started = time.perf_counter()
        self.trainer.run(resume_step=self.trainer.state.step if self.resume_from is not None else None)
        self.summary["steps"] = self.trainer.state.step
        self.train_seconds = time.perf_counter() - started
        if self.feature_store is not None and self.context.is_main and self.feature_cache.misses:
            self.feature_cache.save(self.feature_store)

    def save_checkpoint(self) -> Path | None:
        """``final/``: unsharded weights, LoRA merged, tokenizer included; written to a temp name and renamed."""
        context, output_dir = self.context, self.output_dir
        state = full_state_dict(self.model, context)
        if not context.is_main:
            context.barrier()
            self.final = None
            return None
        from rsfuse.model import MFRSVLM

        lora = "lora" in self.modes.values()
        plain = self.model
        frozen = frozen_quantized_keys(self.model, state)
        if frozen:  # QLoRA: the trained state goes onto the source's full-precision weights, LoRA merged into them
            plain = self.load_source(None, "cpu").to(dtype=torch.float32)
            if lora:
                configure_trainable(plain, self.config.train.trainable, self.config.train.lora)
            missing, unexpected = plain.load_state_dict({k: v for k, v in state.items() if k not in frozen},
                                                        strict=False)
            if unexpected or set(missing) - frozen_quantized_keys(self.model, missing):
                raise RuntimeError(
                    f"final/: trained state does not fit the source model ({missing[:3]}, {unexpected[:3]})"
                )
        elif context.is_distributed or lora:
            plain = MFRSVLM(self.model_config)
            if lora:
                configure_trainable(plain, self.config.train.trainable, self.config.train.lora)
            plain.load_state_dict(state)
        if lora:
            merge_lora(plain)
        final, staging = output_dir / "final", output_dir / ".final-tmp"
        tokenizer_file = output_dir / ".final-tokenizer"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            self.tokenizer.save_pretrained(tokenizer_file)
            plain.save_pretrained(staging, tokenizer=tokenizer_file / "tokenizer.model")
        except Exception as error:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind
            shutil.rmtree(tokenizer_file, ignore_errors=True)
            if not is_disk_full(error, output_dir):
                raise
            kept = list_checkpoints(self.trainer.checkpoint_root)
            kept_text = (f"the checkpoint {kept[-1]} holds every step: free space and run again (resume=auto) to "
                         "write final/") if kept else "no checkpoint was written"
            raise CheckpointSaveError(errno.ENOSPC, f"no space left on {output_dir} while writing final/; the "
                                                    f"partial folder was removed, {kept_text}") from error
        shutil.rmtree(tokenizer_file)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        context.barrier()
        self.final = final
        return final

    # ------------------------------------------------------------------------------------------------ results
    def evaluate(self) -> dict:
        """Summarise the run (losses, throughput) and, with ``eval.after_train``, answer ``data.test_json`` by greedy
        generation; writes ``summary.json`` and ``eval_synthetic.json``."""
        config, output_dir, summary = self.config, self.output_dir, self.summary
        summary["final"] = str(self.final)
        if not self.context.is_main:
            return summary
        plot_loss(output_dir / "metrics.jsonl", output_dir / "loss.png")
        records = read_metrics(output_dir / "metrics.jsonl")
        if records:
            tokens = sum(r.get("tokens", 0) for r in records)
            seconds = sum(r.get("step_s", 0.0) for r in records)
            summary.update(final_loss=records[-1]["loss"], tokens_per_s=tokens / max(seconds, 1e-9),
                           train_seconds_this_session=self.train_seconds)
            val = [r["val_loss"] for r in records if "val_loss" in r]
            if val:
                summary["val_loss"] = val[-1]
        if config.eval.after_train and config.data.test_json:
            from rsfuse.model import MFRSVLM

            evaluated = MFRSVLM.from_pretrained(self.final).to(self.context.device).requires_grad_(False)
            evaluated.enable_vision_feature_cache()  # questions about the same image encode it once
            result = evaluate_test_split(evaluated, self.tokenizer, config)
            (output_dir / "eval_synthetic.json").write_text(json.dumps(result, indent=2))
            print(format_accuracy_table(result))
            summary["eval"] = {kind: row["exact_accuracy"] for kind, row in result["per_type"].items()}
            summary["overall"] = result["overall"]
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k not in ("eval", "data")}))
        return summary


def evaluate_test_split(model, tokenizer, config: TrainRecipeConfig) -> dict:
    """Greedy, KV-cached answers to ``data.test_json`` scored by the evaluation recipe's ``synthetic`` task (one code
    path with ``rsfuse eval``): per question type exact match and the RSEvalKit ``contains`` rule. ``overall`` here is
    the mean per-type exact accuracy without captions (a sentence rarely matches exactly)."""
    from rsfuse.recipes.evaluate import evaluate, read_task

    records = read_task("synthetic", config.data.test_json, config.data.image_root)
    if config.eval.max_samples > 0:
        records = records[: config.eval.max_samples]
    result = evaluate(model, tokenizer, "synthetic", records, batch_size=max(1, config.eval.batch_size),
                      max_new_tokens=config.eval.max_new_tokens, template=config.data.template)
    scored = [row["exact_accuracy"] for kind, row in result["per_type"].items() if kind != "caption"]
    result["overall"] = sum(scored) / len(scored) if scored else None
    result["test_json"] = config.data.test_json
    return result


def format_accuracy_table(result: dict) -> str:
    lines = [f"{'question type':<14} {'n':>5} {'exact':>7} {'contains':>9}"]
    for kind, row in result["per_type"].items():
        lines.append(f"{kind:<14} {row['total']:>5} {row['exact_accuracy']:>7.3f} {row['contains_accuracy']:>9.3f}")
    if result["overall"] is not None:
        lines.append(f"{'overall':<14} {result['total']:>5} {result['overall']:>7.3f}   (mean exact, captions excluded)")
    return "\n".join(lines)


def _resolve_device(config: TrainRecipeConfig) -> str:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda asked but no CUDA device is available")
    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def run(config: TrainRecipeConfig) -> dict:
    """Train (and evaluate) as ``config`` says; returns a summary dict. Raises `NonFiniteLossError`, `ConfigError`.
    The output folder is locked for the run (`rsfuse.train.lock.RunLock`, rank 0)."""
    check_output_dir(config.output_dir)
    device_type = _resolve_device(config)
    context = init_distributed(prefer_cuda=device_type == "cuda")
    lock = RunLock(config.output_dir) if context.is_main else None
    previous = _raise_on_sigterm()
    try:
        if lock is not None:
            lock.acquire()
        recipe = TrainingRecipe(config, context, device_type)
        recipe.setup()
        recipe.train()
        recipe.save_checkpoint()
        return recipe.evaluate()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if lock is not None:
            lock.release()
        context.close()


def _raise_on_sigterm():
    """SIGTERM raises `TrainingInterrupted` in the main thread (as Ctrl-C raises `KeyboardInterrupt`), so the loop
    saves the finished steps before the process exits; returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signal_number, frame):
        raise TrainingInterrupted(signal_number)

    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``[--config FILE] [--debug] [key=value ...]``; exit status 0, 2 (an expected error: bad
    configuration, data, checkpoint, busy output_dir, full disk — one line on stderr naming the file, sample or key;
    the traceback only with ``--debug`` or ``RSFUSE_DEBUG=1``), 3 (non-finite loss)."""
    from rsfuse.recipes.errors import debug_requested, expected_errors, report_expected

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [item for item in argv if item != "--debug"]
    try:
        config = parse_args(argv)
        if config is None:
            return 0
        run(config)
    except ConfigError as error:
        return report_expected("rsfuse train", error, debug=debug, prefix="configuration error: ")
    except NonFiniteLossError as error:
        print(f"rsfuse train: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except (TrainingInterrupted, KeyboardInterrupt) as error:
        stopped = error if isinstance(error, TrainingInterrupted) else TrainingInterrupted(signal.SIGINT)
        if debug:
            traceback.print_exception(stopped, file=sys.stderr)
        if stopped.checkpoint is not None:
            kept = f"saved {stopped.checkpoint} with the {stopped.step} finished steps (resume=auto continues from it)"
        elif stopped.step:
            kept = "no checkpoint written (several processes: the last periodic checkpoint is kept)"
        else:
            kept = "no step had finished; nothing to save"
        where = f" after step {stopped.step}" if stopped.step is not None else ""
        print(f"rsfuse train: interrupted by {stopped.name}{where}; {kept}", file=sys.stderr)
        return 128 + int(stopped.signal_number)
    except expected_errors() as error:
        return report_expected("rsfuse train", error, debug=debug)
    except OSError as error:
        if error.filename is None:  # not about a file the run reads or writes: a bug, keep the traceback
            raise
        return report_expected("rsfuse train", error, debug=debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
