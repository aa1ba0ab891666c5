"""MF-RSVLM training recipe (``rsfuse train`` / ``python recipes/mf_rsvlm_train.py [--config FILE] [key=value ...]``).

What it supports:

- **Configuration**: typed schema of dotted keys (`rsfuse.recipes.config`), YAML files and ``key=value`` overrides;
  ``model.*`` takes `MFRSVLMConfig` fields (``model.llm.hidden_size=128``), ``model.preset`` (tiny | paper) and
  ``model.init_from`` (a folder `MFRSVLM.from_pretrained` reads).
- **Training modes** per part (``train.trainable.{vit,projector,injector,llm}``): ``frozen``, ``full`` or ``lora``
  (peft LoRA on the part's linear layers; merged before ``final/`` is written). Separate tower learning rate
  (``train.vit_lr``), AdamW, cosine schedule with linear warmup, gradient accumulation, clipping, gradient
  checkpointing, bf16 autocast on GPU (``train.dtype=auto``), fp32 on the CPU.
- **Exact resume**: ``checkpoints/step_N/`` holds model, optimizer, scheduler, data position (epoch, optimizer steps
  and samples consumed in it) and every RNG state, written atomically (temp folder + fsync + rename, newest
  ``keep_last`` kept). Data order depends only on (seed, epoch); consumed samples are skipped; deterministic algorithms
  on the CPU; no randomness in data loading. ``resume=auto`` after a SIGKILL at any moment gives weights bit-identical
  to an uninterrupted run on the CPU.
- **Loss normalisation**: every optimizer step minimises the mean token loss over the *global* batch (all
  micro-batches of all processes), so gradient accumulation and data parallelism reproduce the single-process,
  large-batch step.
- **Non-finite loss**: the run stops before the optimizer step, names the step and the last good checkpoint, and exits
  with status 3.
- **Several processes** (``torchrun``, ``WORLD_SIZE`` > 1): gloo on CPU / nccl on GPU, FSDP2 ``fully_shard`` per
  decoder layer, tower block and injector, then the root; each process takes its slice of the same global batch;
  torch.distributed.checkpoint (DCP) for model and optimizer state.
- **Outputs**: ``metrics.jsonl`` (one record per optimizer step: step, loss, lr, grad_norm, tokens, tokens_per_s,
  val_loss when computed), ``loss.png``, ``final/`` (`MFRSVLM.from_pretrained` loads it; tokenizer included) and,
  after training, ``eval_synthetic.json``: a greedy, KV-cached generation evaluation on ``data.test_json`` with a
  per-question-type accuracy table.
- **Embedded default** (no arguments): writes the synthetic benchmark to ``data/synthetic/`` if missing, trains a
  sentencepiece tokenizer on its training text, trains the tiny MF-RSVLM from scratch on the CPU and evaluates it.
"""

import json
import math
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rsfuse.recipes.config import ConfigError, RecipeConfig, flatten, parse_args
from rsfuse.train.checkpointing import CheckpointSaveError, find_latest_checkpoint, list_checkpoints, save_checkpoint
from rsfuse.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    full_state_dict,
    init_distributed,
    load_sharded_state,
    save_sharded_state,
    shard_model,
)
from rsfuse.train.lock import RunLock, RunLockedError
from rsfuse.train.metrics import MetricsWriter, plot_loss
from rsfuse.train.optim import build_optimizer, clip_and_step, cosine_with_warmup, warmup_steps_for
from rsfuse.train.rng import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "main",
    "run",
    "NonFiniteLossError",
    "CheckpointReadError",
    "LoopOptions",
    "TrainState",
    "Trainer",
    "epoch_order",
    "micro_batches_for_step",
]

IGNORE_INDEX = -100
EXIT_NON_FINITE = 3
EXIT_CONFIG = 2
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.pt"
DCP_FOLDER = "dcp"


class NonFiniteLossError(RuntimeError):
    """The loss of an optimizer step is NaN or infinite; ``step`` is the 1-based step that produced it."""

    def __init__(self, step: int, loss: float, last_checkpoint: Path | None) -> None:
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(f"non-finite loss ({loss}) at step {step}; training stopped before that update; {kept}")
        self.step = step


class CheckpointReadError(ValueError):
    """A file of a training checkpoint cannot be read (corrupt, truncated, not what it should be); names the file."""


def _load_state_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    if not path.is_file():
        raise CheckpointReadError(f"{path}: missing")
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        if isinstance(error, pickle.UnpicklingError):
            reason = "corrupt, truncated or not a torch file (or it holds objects weights_only refuses)"
        else:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointReadError(f"{path}: unreadable ({type(error).__name__}: {reason})") from None


# ---------------------------------------------------------------------------------------------------- data order


def epoch_order(num_samples: int, *, seed: int, epoch: int) -> list[int]:
    """The sample order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_batches_for_step(
    order: Sequence[int], step_in_epoch: int, *, batch_size: int, grad_accum: int, world_size: int, rank: int
) -> list[list[int]]:
    """This rank's micro-batches for optimizer step ``step_in_epoch`` (0-based) of an epoch.

    The global batch of a step is ``batch_size × world_size × grad_accum`` consecutive samples of ``order``;
    micro-batch m is its m-th slice of ``batch_size × world_size`` samples, of which this rank takes slice ``rank``.
    One process with ``batch_size × world_size`` sees exactly the same global micro-batches.
    """
    per_micro = batch_size * world_size
    start = step_in_epoch * per_micro * grad_accum
    batches = []
    for micro in range(grad_accum):
        offset = start + micro * per_micro + rank * batch_size
        batches.append(list(order[offset : offset + batch_size]))
    return batches


# ---------------------------------------------------------------------------------------------------- the loop


@dataclass
class LoopOptions:
    """Everything the optimisation loop needs that is not a module (filled from the recipe config)."""

    output_dir: Path
    seed: int = 0
    total_steps: int = 10
    batch_size: int = 2
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    save_every: int = 0
    keep_last: int = 2
    val_every: int = 0
    val_samples: int = 0
    log_every: int = 1
    autocast_dtype: torch.dtype | None = None
    num_workers: int = 0
    progress: bool = True


@dataclass
class TrainState:
    """Where training stands: optimizer steps done in total, current epoch, and steps done within it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _supervised_tokens(batch: dict) -> int:
    labels = batch["labels"]
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _text_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class _IndexBatches(torch.utils.data.Sampler):
    """A fixed list of index lists, for ``DataLoader(batch_sampler=...)``."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Trainer:
    """The optimisation loop over any model with ``model(**batch).loss`` / ``.logits`` and a ``state_dict``.

    ``train_dataset[i]`` gives a sample and ``collate(samples)`` a batch dict with at least ``labels`` (HF style);
    ``state`` is restored from a checkpoint by `load_checkpoint` before `run`.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_dataset,
        collate: Callable[[list], dict],
        options: LoopOptions,
        context: DistributedContext = DistributedContext(),
        val_dataset=None,
        snapshot: dict | None = None,
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.lengths = lengths
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.collate = collate
        self.options = options
        self.context = context
        self.snapshot = snapshot or {}
        self.state = TrainState()
        self.global_batch = options.batch_size * options.grad_accum * context.world_size
        self.steps_per_epoch = len(train_dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {len(train_dataset)} samples, fewer than one global batch of {self.global_batch} "
                f"(train.batch_size {options.batch_size} × train.grad_accum {options.grad_accum} × "
                f"{context.world_size} processes)"
            )
        self.checkpoint_root = Path(options.output_dir) / "checkpoints"
        self.metrics: MetricsWriter | None = None
        self._rng_at_step_start: dict | None = None
        self.data_report: dict = {}  # set by the recipe: per split the data check's counts (skipped, truncated)
        self._data_logged = False

    # ------------------------------------------------------------------ checkpoints
    def save(self, *, rng_state: dict | None = None) -> Path:
        """Write ``checkpoints/step_N`` atomically (every rank calls this); ``rng_state`` replaces the current RNG
        state (the state at the start of a step that failed)."""
        context = self.context

        def write(folder: Path) -> None:
            if context.is_distributed:
                save_sharded_state(self.model, self.optimizer, folder / DCP_FOLDER)
            elif context.is_main:
                from safetensors.torch import save_file

                state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}
                save_file(state, str(folder / MODEL_FILE))
                torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)
            torch.save(rng_state or capture_rng_state(), folder / f"rng_rank{context.rank}.pt")
            if context.is_main:
                trainer_state = {
                    "step": self.state.step,
                    "epoch": self.state.epoch,
                    "step_in_epoch": self.state.step_in_epoch,
                    "samples_consumed_in_epoch": self.state.step_in_epoch * self.global_batch,
                    "global_batch": self.global_batch,
                    "world_size": context.world_size,
                    "scheduler": self.scheduler.state_dict(),
                }
                torch.save(trainer_state, folder / TRAINER_STATE_FILE)
                (folder / "recipe.json").write_text(json.dumps(self.snapshot, indent=2, default=str))

        return save_checkpoint(
            self.checkpoint_root,
            self.state.step,
            write,
            keep_last=self.options.keep_last,
            is_main=context.is_main,
            barrier=context.barrier if context.is_distributed else None,
        )

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, data position and this rank's RNG from ``folder``. Every file of a
        single-process checkpoint is read before anything is changed; an unreadable one raises `CheckpointReadError`
        naming it (the run's state is then untouched)."""
        folder = Path(folder)
        trainer_state = _load_state_file(folder / TRAINER_STATE_FILE)
        if not isinstance(trainer_state, dict) or not {"global_batch", "step", "epoch", "step_in_epoch",
                                                        "scheduler"} <= set(trainer_state):
            raise CheckpointReadError(f"{folder / TRAINER_STATE_FILE}: not a trainer state (keys missing)")
        if trainer_state["global_batch"] != self.global_batch:
            raise ConfigError(
                f"{folder}: checkpoint was written with a global batch of {trainer_state['global_batch']} samples, "
                f"this run uses {self.global_batch}; resuming exactly needs the same batch_size × grad_accum × processes"
            )
        rng_file = folder / f"rng_rank{self.context.rank}.pt"
        if not rng_file.is_file():
            raise ConfigError(f"{rng_file}: missing (the checkpoint was written by fewer processes)")
        rng_state = _load_state_file(rng_file)
        if not isinstance(rng_state, dict) or not {"python", "numpy", "torch_cpu"} <= set(rng_state):
            raise CheckpointReadError(f"{rng_file}: not an RNG state (entries python, numpy, torch_cpu expected)")
        if self.context.is_distributed:
            if not (folder / DCP_FOLDER).is_dir():
                raise ConfigError(f"{folder}: no {DCP_FOLDER}/ (written by a single process; resume it with one)")
            load_sharded_state(self.model, self.optimizer, folder / DCP_FOLDER)
        else:
            if not (folder / MODEL_FILE).is_file():
                raise ConfigError(f"{folder}: no {MODEL_FILE} (written under torchrun; resume it with torchrun)")
            from safetensors.torch import load_file

            try:
                state = load_file(str(folder / MODEL_FILE))
            except Exception as error:  # SafetensorError, OSError
                raise CheckpointReadError(f"{folder / MODEL_FILE}: unreadable ({type(error).__name__}: "
                                          f"{str(error)[:200]})") from None
            optimizer_state = _load_state_file(folder / OPTIMIZER_FILE)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ConfigError(
                    f"{folder / MODEL_FILE}: does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            try:
                self.optimizer.load_state_dict(optimizer_state)
            except (ValueError, KeyError, TypeError) as error:
                raise CheckpointReadError(f"{folder / OPTIMIZER_FILE}: does not match the optimizer ({error})") from None
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.state = TrainState(
            step=trainer_state["step"], epoch=trainer_state["epoch"], step_in_epoch=trainer_state["step_in_epoch"]
        )
        try:
            restore_rng_state(rng_state)
        except Exception as error:
            raise CheckpointReadError(f"{rng_file}: not an RNG state ({type(error).__name__}: {error})") from None

    def epoch_order(self, epoch: int) -> list[int]:
        """Sample order of ``epoch``, a function of (seed, epoch) only; length-grouped when ``lengths`` is given
        (`rsfuse.data.sampler.length_grouped_indices`: each megabatch of batch_size × processes samples is sorted by
        length and dealt to the processes)."""
        if self.lengths is None:
            return epoch_order(len(self.train_dataset), seed=self.options.seed, epoch=epoch)
        from rsfuse.data.sampler import length_grouped_indices

        generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
        return length_grouped_indices(
            self.lengths, batch_size=self.options.batch_size, world_size=self.context.world_size, generator=generator
        )

    # ------------------------------------------------------------------ one step
    def _loader(self, batches: list[list[int]]):
        # The loader's own generator: creating an iterator draws a worker base seed, which must not consume the
        # global torch RNG (a resumed run creates its loader at a different moment than an uninterrupted one).
        generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + self.state.epoch)
        return torch.utils.data.DataLoader(
            self.train_dataset,
            batch_sampler=_IndexBatches(batches),
            collate_fn=self.collate,
            num_workers=self.options.num_workers,
            generator=generator,
        )

    def _autocast(self):
        dtype = self.options.autocast_dtype
        if dtype is None:
            return torch.autocast(self.context.device.type, enabled=False)
        return torch.autocast(self.context.device.type, dtype=dtype)

    def _train_step(self, micro_batches: list[dict]) -> tuple[float, float, int]:
        """Forward/backward every micro-batch, then clip and step; returns (global loss, grad norm, global tokens)."""
        context = self.context
        device = context.device
        counts = torch.tensor([float(_supervised_tokens(b)) for b in micro_batches] + [0.0])
        counts[-1] = sum(_text_tokens(b) for b in micro_batches)
        totals = all_reduce_sum(counts.to(device), context).cpu()
        total_supervised = float(totals[:-1].sum())
        if total_supervised == 0:
            raise ConfigError(f"step {self.state.step + 1}: the global batch holds no supervised (answer) tokens")
        loss_sum = torch.zeros((), device=device)
        self.model.train()
        for batch, count in zip(micro_batches, counts[:-1].tolist()):
            batch = _to_device(batch, device)
            with self._autocast():
                output = self.model(**batch)
            if count > 0:
                contribution = output.loss.float() * (count / total_supervised)
            else:  # keeps every rank's collectives in step while adding nothing
                contribution = output.logits.float().sum() * 0.0
            (contribution * context.world_size).backward()
            loss_sum = loss_sum + contribution.detach()
        loss = float(all_reduce_sum(loss_sum, context))
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.state.step + 1, loss, find_latest_checkpoint(self.checkpoint_root))
        grad_norm = clip_and_step(
            self.model.parameters(), self.optimizer, self.scheduler, max_grad_norm=self.options.max_grad_norm
        )
        return loss, grad_norm, int(totals[-1])

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean token loss over the first ``val_samples`` validation samples (whole per-process batches)."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return None
        world, batch_size = self.context.world_size, self.options.batch_size
        limit = len(self.val_dataset) if self.options.val_samples <= 0 else min(self.options.val_samples, len(self.val_dataset))
        per_round = world * batch_size
        rounds = math.ceil(limit / per_round)
        batches = [
            list(range(r * per_round + self.context.rank * batch_size,
                       min(limit, r * per_round + (self.context.rank + 1) * batch_size)))
            for r in range(rounds)
        ]
        # Sharded, every rank must run the same number of forwards: an empty slice re-reads sample 0, weighted 0.
        weights = [1.0 if batch else 0.0 for batch in batches]
        batches = [batch or [0] for batch in batches]
        loader = torch.utils.data.DataLoader(
            self.val_dataset,
            batch_sampler=_IndexBatches(batches),
            collate_fn=self.collate,
            num_workers=0,
            generator=torch.Generator().manual_seed(self.options.seed),
        )
        self.model.eval()
        sums = torch.zeros(2, device=self.context.device)
        for batch, weight in zip(loader, weights):
            count = _supervised_tokens(batch) * weight
            if count == 0 and not self.context.is_distributed:
                continue
            with self._autocast():
                output = self.model(**_to_device(batch, self.context.device))
            sums += torch.stack([output.loss.float() * count, torch.tensor(float(count), device=sums.device)])
        self.model.train()
        sums = all_reduce_sum(sums, self.context)
        return float(sums[0] / sums[1]) if float(sums[1]) > 0 else None

    # ------------------------------------------------------------------ the run
    def _save_after_failure(self, error: Exception) -> None:
        """An unexpected failure inside a step: in a single process, save the state after the last finished step
        (when it is newer than the last checkpoint) so that ``resume=auto`` loses nothing; under torchrun (the other
        ranks cannot join a collective save) only name the rank. The step's own changes are not in the saved state:
        a failure before the optimizer step leaves the weights as the last finished step left them."""
        context = self.context
        where = f"rank {context.rank}: " if context.is_distributed else ""
        note = f"{where}step {self.state.step + 1} failed ({type(error).__name__})"
        if context.is_distributed or self.state.step == 0:
            print(f"[rsfuse] {note}; no checkpoint written for it", file=sys.stderr)
            return
        latest = find_latest_checkpoint(self.checkpoint_root)
        if latest is not None and latest.name == f"step_{self.state.step}":
            print(f"[rsfuse] {note}; the checkpoint {latest} holds every finished step", file=sys.stderr)
            return
        self.model.zero_grad(set_to_none=True)
        rng = self._rng_at_step_start
        try:
            folder = self.save(rng_state=rng)
        except Exception as save_error:  # the original error is what the user must see
            print(f"[rsfuse] {note}; saving a checkpoint failed too ({save_error})", file=sys.stderr)
            return
        print(f"[rsfuse] {note}; saved {folder} with the {self.state.step} finished steps (resume=auto continues "
              "from it)", file=sys.stderr)

    def run(self, *, resume_step: int | None = None) -> TrainState:
        """Train until ``options.total_steps`` optimizer steps are done; returns the final state."""
        options, context = self.options, self.context
        self.metrics = MetricsWriter(
            Path(options.output_dir) / "metrics.jsonl", resume_step=resume_step, enabled=context.is_main
        )
        progress = None
        if options.progress and context.is_main:
            from tqdm import tqdm

            progress = tqdm(total=options.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True)
        started = time.perf_counter()
        try:
            while self.state.step < options.total_steps:
                if self.state.step_in_epoch >= self.steps_per_epoch:
                    self.state.epoch += 1
                    self.state.step_in_epoch = 0
                order = self.epoch_order(self.state.epoch)
                steps_here = min(self.steps_per_epoch, self.state.step_in_epoch + options.total_steps - self.state.step)
                step_batches = [
                    micro_batches_for_step(
                        order,
                        index,
                        batch_size=options.batch_size,
                        grad_accum=options.grad_accum,
                        world_size=context.world_size,
                        rank=context.rank,
                    )
                    for index in range(self.state.step_in_epoch, steps_here)
                ]
                loader = iter(self._loader([batch for step in step_batches for batch in step]))
                for _ in step_batches:
                    step_started = time.perf_counter()
                    self._rng_at_step_start = capture_rng_state() if not context.is_distributed else None
                    try:
                        micro_batches = [next(loader) for _ in range(options.grad_accum)]
                        loss, grad_norm, tokens = self._train_step(micro_batches)
                    except NonFiniteLossError:
                        raise
                    except Exception as error:
                        self._save_after_failure(error)
                        raise
                    self.state.step += 1
                    self.state.step_in_epoch += 1
                    seconds = time.perf_counter() - step_started
                    lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(self.optimizer.param_groups)}
                    record = {
                        "step": self.state.step,
                        "epoch": self.state.epoch,
                        "loss": loss,
                        "lr": next((lr for name, lr in lrs.items() if not str(name).startswith("tower")), None)
                        or next(iter(lrs.values())),
                        "grad_norm": grad_norm,
                        "tokens": tokens,
                        "tokens_per_s": tokens / max(seconds, 1e-9),
                        "step_s": seconds,
                        "elapsed_s": time.perf_counter() - started,
                    }
                    if self.data_report and not self._data_logged:  # the data check's counts, once per session
                        record["data_skipped"] = {name: report["skipped"] for name, report in self.data_report.items()}
                        record["data_truncated"] = {name: report["truncated"] for name, report in self.data_report.items()}
                        self._data_logged = True
                    tower_lrs = [lr for name, lr in lrs.items() if str(name).startswith("tower")]
                    if tower_lrs:
                        record["vit_lr"] = tower_lrs[0]
                    last = self.state.step == options.total_steps
                    if (options.val_every > 0 and self.state.step % options.val_every == 0) or last:
                        val_loss = self.validation_loss()
                        if val_loss is not None:
                            record["val_loss"] = val_loss
                    self.metrics.write(record)
                    if progress is not None:
                        progress.update(1)
                        if self.state.step % max(1, options.log_every) == 0 or last:
                            postfix = {"loss": f"{loss:.4f}", "lr": f"{record['lr']:.2e}", "tok/s": f"{record['tokens_per_s']:.0f}"}
                            if "val_loss" in record:
                                postfix["val"] = f"{record['val_loss']:.4f}"
                            progress.set_postfix(postfix)
                    if (options.save_every > 0 and self.state.step % options.save_every == 0) or last:
                        self.save()
        finally:
            if progress is not None:
                progress.close()
        return self.state


# ---------------------------------------------------------------------------------------------------- the model

PART_PREFIXES: dict[str, tuple[str, ...]] = {
    "vit": ("vision_tower.",),
    "projector": ("projector.",),
    "injector": ("injectors.",),
    "llm": ("llm.",),
}


def part_of(name: str) -> str:
    """Which trainable part (vit | projector | injector | llm) a parameter name belongs to."""
    for part, prefixes in PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    raise ConfigError(f"parameter {name!r} belongs to no trainable part ({', '.join(PART_PREFIXES)})")


def _coerce_model_value(key: str, value: Any, current: Any) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key 'model.{key}': expected true/false, got {value!r}")
    if isinstance(current, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(current, float) and not isinstance(value, bool) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    if isinstance(current, list) and isinstance(value, (list, tuple)):
        return list(value)
    if current is None or (isinstance(current, (int, float)) and value is None):
        return value
    raise ConfigError(f"config key 'model.{key}': expected {type(current).__name__}, got {value!r}")


TINY_CPU_OVERRIDES: dict[str, Any] = {
    "vision.hidden_size": 32,
    "vision.intermediate_size": 128,
    "vision.num_attention_heads": 2,
    "vision.num_hidden_layers": 4,
    "global_layer": 4,
    "detail_layers": [1, 2],
    "window_scales": [1.0, 0.5],
    "canvas_source": "image",
    "llm.hidden_size": 128,
    "llm.intermediate_size": 256,
}
"""The ``tiny_cpu`` preset (the embedded default): `MFRSVLMConfig.tiny` with a narrow 4-block tower (width 32, 2 heads),
the faithful two-scale canvas over the real 224-px image (``canvas_source="image"``: the synthetic images are exactly
the canvas size; 3×3 windows at scale 1.0 plus 7×7 windows of 56 px upsampled to 112 at scale 0.5, which magnifies
small objects 2×: 59 tower passes per image), detail from hidden states 1 and 2 only (the 58 window passes stop after
block 2; the global view uses block 4) and a 128-wide decoder, so a from-scratch run fits in about ten minutes on two
CPU cores (measurements: BENCHMARKS.md, "Embedded default")."""


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


def check_model_source_keys(config: RecipeConfig) -> None:
    """Refuse combinations of the model-source and feature-cache keys that cannot work, before any data is read."""
    if config["model.vision_weights"] and (config["model.init_from"] or config["model.vision_from"]):
        raise ConfigError("model.vision_weights applies to a model built from model.preset; it cannot be combined "
                          "with model.init_from or model.vision_from")
    if config["train.cache_vision_features"] and config["train.trainable.vit"] != "frozen":
        raise ConfigError("train.cache_vision_features=true needs train.trainable.vit=frozen (got "
                          f"{config['train.trainable.vit']!r})")
    if config["train.feature_cache_dir"] and not config["train.cache_vision_features"]:
        raise ConfigError("train.feature_cache_dir needs train.cache_vision_features=true")


def build_model_config(config: RecipeConfig, tokenizer) -> "MFRSVLMConfig":
    """The `MFRSVLMConfig`: preset, then ``model.*`` overrides (each checked against the preset's fields), then the
    tokenizer's vocabulary size and special ids."""
    from rsfuse.model import MFRSVLMConfig

    presets = {"tiny": MFRSVLMConfig.tiny, "paper": MFRSVLMConfig.paper, "tiny_cpu": MFRSVLMConfig.tiny}
    preset = config["model.preset"]
    if preset not in presets:
        raise ConfigError(f"config key 'model.preset': unknown preset {preset!r} (known: {', '.join(presets)})")
    data = presets[preset]().to_dict()
    flat = flatten(data)
    if preset == "tiny_cpu":
        flat.update(TINY_CPU_OVERRIDES)
    for key, value in config.model.items():
        if key not in flat:
            close = [k for k in flat if k.split(".")[-1] == key.split(".")[-1]]
            hint = f"; did you mean {', '.join('model.' + k for k in close)}?" if close else ""
            raise ConfigError(f"unknown config key 'model.{key}' (not an MFRSVLMConfig field){hint}")
        flat[key] = _coerce_model_value(key, value, flat[key])
    from rsfuse.recipes.config import unflatten

    data = unflatten(flat)
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


def lora_targets(model: nn.Module, parts: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules LoRA wraps: every linear layer of the given parts, except the
    decoder's output head."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head") and part_of(name + ".") in parts:
            names.append(name)
    return names


def configure_trainable(model: nn.Module, config: RecipeConfig) -> dict[str, str]:
    """Freeze / unfreeze each part and inject peft LoRA adapters where ``lora`` is asked; returns part → mode."""
    modes = {part: config[f"train.trainable.{part}"] for part in PART_PREFIXES}
    lora_parts = [part for part, mode in modes.items() if mode == "lora"]
    if lora_parts:
        from peft import LoraConfig, inject_adapter_in_model

        targets = lora_targets(model, lora_parts)
        if not targets:
            raise ConfigError(f"train.trainable: no linear layers to put LoRA on in {lora_parts}")
        pattern = "^(" + "|".join(re.escape(name) for name in targets) + ")$"
        lora = LoraConfig(
            r=config["train.lora.r"],
            lora_alpha=config["train.lora.alpha"],
            lora_dropout=config["train.lora.dropout"],
            target_modules=pattern,
            bias="none",
        )
        inject_adapter_in_model(lora, model)
    for name, parameter in model.named_parameters():
        mode = modes[part_of(name)]
        parameter.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    return modes


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base linear layer and put the plain layer back (original key names)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 units: each decoder layer, each vision-tower block, each injector (the root is sharded last)."""
    units: list[nn.Module] = list(model.llm.model.layers)
    units += [module for name, module in model.vision_tower.named_modules() if re.fullmatch(r".*layers\.\d+", name)]
    units += list(model.injectors.values())
    return units


# ---------------------------------------------------------------------------------------------------- data


def prepare_synthetic_data(config: RecipeConfig, context: DistributedContext) -> None:
    """Write the synthetic benchmark at ``data.image_root`` when ``data.json`` is missing and ``data.synthetic``."""
    if Path(config["data.json"]).is_file():
        return
    if not config["data.synthetic"]:
        raise ConfigError(f"data.json: {config['data.json']} not found (set data.synthetic=true to create the benchmark)")
    if context.is_main:
        from rsfuse.data.synthetic import generate

        print(f"[rsfuse] writing the synthetic benchmark ({config['data.synthetic_images']} images) to "
              f"{config['data.image_root']}", file=sys.stderr)
        generate(
            config["data.image_root"],
            n_images=config["data.synthetic_images"],
            seed=config["seed"],
            workers=max(1, min(4, os.cpu_count() or 1)),
        )
    context.barrier()
    if not Path(config["data.json"]).is_file():
        raise ConfigError(f"data.json: {config['data.json']} is still missing after writing the synthetic benchmark "
                          f"to {config['data.image_root']} (does data.json point into data.image_root?)")


def _conversation_texts(json_path: Path) -> list[str]:
    records = json.loads(json_path.read_text())
    texts = []
    for record in records:
        for turn in record.get("conversations", []):
            texts.append(str(turn.get("value", "")).replace("<image>", "").strip())
    return texts


def prepare_tokenizer(config: RecipeConfig, context: DistributedContext, output_dir: Path):
    """``data.tokenizer`` if given; else ``model.init_from``'s tokenizer; else ``<output_dir>/tokenizer`` (trained with
    sentencepiece on the training conversations and the template's fixed text when missing)."""
    from rsfuse.llm.templates import build_prompt
    from rsfuse.llm.tokenizer import Tokenizer, train_sentencepiece

    if config["data.tokenizer"]:
        return Tokenizer.from_pretrained(config["data.tokenizer"])
    for source in (config["model.init_from"], config["model.llava_from"], config["model.llm_from"]):
        if source and (Path(source) / "tokenizer.model").is_file():
            return Tokenizer.from_pretrained(source)
    folder = output_dir / "tokenizer"
    if not (folder / "tokenizer.model").is_file():
        if context.is_main:
            texts = _conversation_texts(Path(config["data.json"]))
            prompt = build_prompt(config["data.template"], "question", with_image=False) if config["data.template"] != "plain" else ""
            texts += [prompt] * 50
            staging = output_dir / ".tokenizer-tmp"
            shutil.rmtree(staging, ignore_errors=True)
            train_sentencepiece(texts, staging, vocab_size=config["data.vocab_size"])
            os.replace(staging, folder)
        context.barrier()
    return Tokenizer.from_pretrained(folder)


def build_datasets(config: RecipeConfig, tokenizer, model_config):
    """Training and validation `InstructionDataset` and the collate function (right padding)."""
    import functools

    from rsfuse.data import ImageProcessor, InstructionDataset, collate

    processor = ImageProcessor(model_config.input_size)
    common = dict(
        image_root=config["data.image_root"],
        tokenizer=tokenizer,
        template=config["data.template"],
        processor=processor,
        max_length=config["data.max_length"],
        skip_bad=config["data.skip_bad"],
        image_length=model_config.num_visual_tokens,
        bands=tuple(config["data.bands"]) if config["data.bands"] is not None else None,
        allow_outside_root=config["data.allow_outside_root"],
    )
    train = InstructionDataset(config["data.json"], **common)
    val = InstructionDataset(config["data.val_json"], **common) if config["data.val_json"] else None
    return train, val, functools.partial(collate, pad_id=tokenizer.pad_id)


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


# ---------------------------------------------------------------------------------------------------- evaluation


def evaluate_test_split(model, tokenizer, config: RecipeConfig) -> dict:
    """Greedy, KV-cached answers to ``data.test_json`` scored by the evaluation recipe's ``synthetic`` task (one code
    path with ``rsfuse eval``): per question type exact match and the RSEvalKit ``contains`` rule. ``overall`` here is
    the mean per-type exact accuracy without captions (a sentence rarely matches exactly)."""
    from rsfuse.recipes.evaluate import evaluate, read_task

    records = read_task("synthetic", config["data.test_json"], config["data.image_root"])
    if config["eval.max_samples"] > 0:
        records = records[: config["eval.max_samples"]]
    result = evaluate(model, tokenizer, "synthetic", records, batch_size=max(1, config["eval.batch_size"]),
                      max_new_tokens=config["eval.max_new_tokens"], template=config["data.template"])
    scored = [row["exact_accuracy"] for kind, row in result["per_type"].items() if kind != "caption"]
    result["overall"] = sum(scored) / len(scored) if scored else None
    result["test_json"] = config["data.test_json"]
    return result


def format_accuracy_table(result: dict) -> str:
    lines = [f"{'question type':<14} {'n':>5} {'exact':>7} {'contains':>9}"]
    for kind, row in result["per_type"].items():
        lines.append(f"{kind:<14} {row['total']:>5} {row['exact_accuracy']:>7.3f} {row['contains_accuracy']:>9.3f}")
    if result["overall"] is not None:
        lines.append(f"{'overall':<14} {result['total']:>5} {result['overall']:>7.3f}   (mean exact, captions excluded)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the recipe


def _resolve_device(config: RecipeConfig) -> str:
    choice = config["device"]
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda asked but no CUDA device is available")
    return "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"


def _autocast_dtype(config: RecipeConfig, device_type: str) -> torch.dtype | None:
    dtype = config["train.dtype"]
    if dtype == "bf16" or (dtype == "auto" and device_type == "cuda"):
        return torch.bfloat16
    return None


def check_context_length(config: RecipeConfig, model_config) -> None:
    """Refuse ``data.max_length`` beyond the decoder's context: an image sample holds the visual tokens in place of
    its ``<image>`` token, so text + visual tokens - 1 must fit in ``max_position_embeddings``."""
    context = model_config.llm.max_position_embeddings
    visual = model_config.num_visual_tokens
    longest = config["data.max_length"] + max(visual - 1, 0)
    if longest > context:
        raise ConfigError(
            f"config key 'data.max_length': {config['data.max_length']} text tokens (+ {visual} visual tokens in "
            f"place of <image>) exceed the decoder's context, max_position_embeddings = {context}; "
            f"use data.max_length <= {context - max(visual - 1, 0)}"
        )


def _resume_candidates(config: RecipeConfig, checkpoint_root: Path) -> list[Path]:
    """Checkpoints to try, best first: ``resume=auto`` every complete one newest first (a corrupt one falls back to
    the one before), a PATH just that one, ``none`` nothing."""
    resume = config["resume"]
    if resume == "auto":
        return list(reversed(list_checkpoints(checkpoint_root)))
    folder = _resume_folder(config, checkpoint_root)
    return [folder] if folder is not None else []


def _resume_folder(config: RecipeConfig, checkpoint_root: Path) -> Path | None:
    resume = config["resume"]
    if resume == "none":
        return None
    if resume == "auto":
        return find_latest_checkpoint(checkpoint_root)
    folder = Path(resume)
    if not (folder / "COMPLETE").is_file():
        raise ConfigError(f"config key 'resume': {folder} is not a complete checkpoint folder (no COMPLETE marker)")
    return folder


def _write_final(model, model_config, tokenizer, config: RecipeConfig, context: DistributedContext, modes, output_dir):
    """``final/``: unsharded weights, LoRA merged, tokenizer included; written to a temp name and renamed."""
    state = full_state_dict(model, context)
    if not context.is_main:
        context.barrier()
        return None
    from rsfuse.model import MFRSVLM

    if context.is_distributed or "lora" in modes.values():
        plain = MFRSVLM(model_config)
        if "lora" in modes.values():
            configure_trainable(plain, config)
        plain.load_state_dict(state)
    else:
        plain = model
    if "lora" in modes.values():
        merge_lora(plain)
    final = output_dir / "final"
    staging = output_dir / ".final-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer_file = output_dir / ".final-tokenizer"
    tokenizer.save_pretrained(tokenizer_file)
    plain.save_pretrained(staging, tokenizer=tokenizer_file / "tokenizer.model")
    shutil.rmtree(tokenizer_file)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    context.barrier()
    return final


def run(config: RecipeConfig) -> dict:
    """Train (and evaluate) as ``config`` says; returns a summary dict. Raises `NonFiniteLossError`, `ConfigError`."""
    device_type = _resolve_device(config)
    context = init_distributed(prefer_cuda=device_type == "cuda")
    lock = RunLock(config["output_dir"]) if context.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        return _run(config, context, device_type)
    finally:
        if lock is not None:
            lock.release()
        context.close()


def _run(config: RecipeConfig, context: DistributedContext, device_type: str) -> dict:
    from rsfuse.model import MFRSVLM

    if config["num_threads"] > 0:
        torch.set_num_threads(config["num_threads"])
    if device_type == "cpu":
        torch.use_deterministic_algorithms(True)
    output_dir = Path(config["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    if context.is_main:
        config.save(output_dir / "recipe.yaml")
    check_model_source_keys(config)
    prepare_synthetic_data(config, context)
    tokenizer = prepare_tokenizer(config, context, output_dir)
    seed_everything(config["seed"])
    if config["model.init_from"]:
        model = MFRSVLM.from_pretrained(config["model.init_from"], **config.model)
        model_config = model.config
    elif config["model.vision_from"]:
        model = MFRSVLM.from_parts(
            vision=config["model.vision_from"],
            llm=config["model.llm_from"] or None,
            llava=config["model.llava_from"] or None,
            **config.model,
        )
        model_config = model.config
    else:
        model_config = build_model_config(config, tokenizer)
        model = MFRSVLM(model_config)
        if config["model.vision_weights"]:
            load_tower_weights(model, config["model.vision_weights"])
    if model_config.llm.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model vocabulary ({model_config.llm.vocab_size}) is smaller than the tokenizer's "
                          f"({tokenizer.vocab_size})")
    check_context_length(config, model_config)
    modes = configure_trainable(model, config)
    feature_cache, feature_store = None, None
    if config["train.cache_vision_features"]:
        feature_cache = model.enable_vision_feature_cache()
        if config["train.feature_cache_dir"]:
            from rsfuse.model.feature_cache import feature_key

            feature_store = Path(config["train.feature_cache_dir"]) / f"{feature_key(model)}.safetensors"
    if config["train.gradient_checkpointing"]:
        model.llm.gradient_checkpointing_enable()
    device = context.device
    model.to(device)
    if feature_store is not None and feature_store.is_file():
        count = feature_cache.load(feature_store, device)
        if context.is_main:
            print(f"[rsfuse] reusing {count} images' tower features from {feature_store}", file=sys.stderr)
    train_set, val_set, collate_fn = build_datasets(config, tokenizer, model_config)
    data_report = check_data(train_set, val_set, context)
    if context.is_distributed:
        shard_model(model, fsdp_units(model), context)
    options = LoopOptions(
        output_dir=output_dir,
        seed=config["seed"],
        batch_size=config["train.batch_size"],
        grad_accum=config["train.grad_accum"],
        max_grad_norm=config["train.max_grad_norm"],
        save_every=config["save_every"],
        keep_last=config["keep_last"],
        val_every=config["train.val_every"],
        val_samples=config["train.val_samples"],
        log_every=config["train.log_every"],
        autocast_dtype=_autocast_dtype(config, device_type),
        num_workers=config["data.num_workers"],
    )
    global_batch = options.batch_size * options.grad_accum * context.world_size
    steps_per_epoch = len(train_set) // global_batch
    total_steps = config["max_steps"] if config["max_steps"] > 0 else config["train.epochs"] * steps_per_epoch
    options.total_steps = total_steps
    optimizer = build_optimizer(
        model.named_parameters(),
        lr=config["train.lr"],
        weight_decay=config["train.weight_decay"],
        tower_lr=config["train.vit_lr"],
        is_tower=lambda name: part_of(name) == "vit",
    )
    scheduler = cosine_with_warmup(
        optimizer, total_steps=max(1, total_steps), warmup_steps=warmup_steps_for(total_steps, config["train.warmup_ratio"])
    )
    snapshot = config.to_dict()
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_dataset=train_set,
        collate=collate_fn,
        options=options,
        context=context,
        val_dataset=val_set,
        snapshot=snapshot,
        lengths=train_set.lengths if config["data.group_by_length"] else None,
    )
    candidates = _resume_candidates(config, trainer.checkpoint_root)
    if not candidates and config["resume"] == "none" and list_checkpoints(trainer.checkpoint_root):
        raise ConfigError(f"resume=none but {trainer.checkpoint_root} already holds checkpoints; use resume=auto or "
                          "another output_dir")
    trainer.data_report = data_report
    resume_from = None
    for position, candidate in enumerate(candidates):
        try:
            trainer.load_checkpoint(candidate)
        except CheckpointReadError as error:
            if position + 1 == len(candidates) or context.is_distributed:
                raise
            if context.is_main:
                print(f"[rsfuse] {error}; falling back to {candidates[position + 1]}", file=sys.stderr)
            continue
        resume_from = candidate
        break
    if resume_from is not None and context.is_main:
        print(f"[rsfuse] resumed from {resume_from} (step {trainer.state.step})", file=sys.stderr)
    started = time.perf_counter()
    trainer.run(resume_step=trainer.state.step if resume_from is not None else None)
    train_seconds = time.perf_counter() - started
    if feature_store is not None and context.is_main and feature_cache.misses:
        feature_cache.save(feature_store)
    final = _write_final(model, model_config, tokenizer, config, context, modes, output_dir)
    summary: dict[str, Any] = {"output_dir": str(output_dir), "steps": trainer.state.step, "final": str(final),
                               "data": data_report}
    if not context.is_main:
        return summary
    plot_loss(output_dir / "metrics.jsonl", output_dir / "loss.png")
    from rsfuse.train.metrics import read_metrics

    records = read_metrics(output_dir / "metrics.jsonl")
    if records:
        tokens = sum(r.get("tokens", 0) for r in records)
        seconds = sum(r.get("step_s", 0.0) for r in records)
        summary.update(final_loss=records[-1]["loss"], tokens_per_s=tokens / max(seconds, 1e-9),
                       train_seconds_this_session=train_seconds)
        val = [r["val_loss"] for r in records if "val_loss" in r]
        if val:
            summary["val_loss"] = val[-1]
    if config["eval.after_train"] and config["data.test_json"]:
        evaluated = MFRSVLM.from_pretrained(final).to(device).requires_grad_(False)
        evaluated.enable_vision_feature_cache()  # questions about the same image encode it once
        result = evaluate_test_split(evaluated, tokenizer, config)
        (output_dir / "eval_synthetic.json").write_text(json.dumps(result, indent=2))
        print(format_accuracy_table(result))
        summary["eval"] = {kind: row["exact_accuracy"] for kind, row in result["per_type"].items()}
        summary["overall"] = result["overall"]
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("eval", "data")}))
    return summary


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
    except expected_errors() as error:
        return report_expected("rsfuse train", error, debug=debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
