"""The optimisation loop: `Trainer` runs optimizer steps over any model with ``model(**batch).loss`` / ``.logits``.

Every optimizer step minimises the mean token loss over the *global* batch (all micro-batches of all processes), so
gradient accumulation and data parallelism reproduce the single-process, large-batch step. Data order depends only on
(seed, epoch) (`rsfuse.train.order`); the step folders it writes and reads are `rsfuse.train.state`'s. A non-finite
loss stops the run before the update (`NonFiniteLossError`); an unexpected failure inside a step saves the finished
steps first (single process).
"""

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from rsfuse.llm import IGNORE_INDEX
from rsfuse.recipes.config import ConfigError
from rsfuse.train.checkpointing import find_latest_checkpoint, save_checkpoint
from rsfuse.train.distributed import DistributedContext, all_reduce_sum
from rsfuse.train.metrics import MetricsWriter
from rsfuse.train.optim import clip_and_step
from rsfuse.train.order import IndexBatches, epoch_order, micro_batches_for_step
from rsfuse.train.rng import capture_rng_state
from rsfuse.train.state import TrainState, read_step_files, write_step_files

__all__ = ["LoopOptions", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]


class NonFiniteLossError(RuntimeError):
    """The loss of an optimizer step is NaN or infinite; ``step`` is the 1-based step that produced it."""

    def __init__(self, step: int, loss: float, last_checkpoint: Path | None) -> None:
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(f"non-finite loss ({loss}) at step {step}; training stopped before that update; {kept}")
        self.step = step



class TrainingInterrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM during training. A `BaseException`, like `KeyboardInterrupt`, so that no
    ``except Exception`` swallows it. `Trainer.run` fills ``step`` (finished steps) and ``checkpoint`` (the checkpoint
    holding them, saved on the way out in a single process; None under torchrun or before the first step)."""

    def __init__(self, signal_number: int = 2) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number
        self.step: int | None = None
        self.checkpoint: Path | None = None

    @property
    def name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signal_number).name
        except ValueError:
            return f"signal {self.signal_number}"


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



def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _supervised_tokens(batch: dict) -> int:
    labels = batch["labels"]
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _sequence_tokens(batch: dict) -> int:
    """Tokens the decoder reads: the attention mask of the laid-out batch (visual tokens included)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())



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
    # ------------------------------------------------------------------ checkpoints
    def save(self, *, rng_state: dict | None = None) -> Path:
        """Write ``checkpoints/step_N`` atomically (every rank calls this); ``rng_state`` replaces the current RNG
        state (the state at the start of a step that failed)."""
        context = self.context
        return save_checkpoint(
            self.checkpoint_root,
            self.state.step,
            lambda folder: write_step_files(self, folder, rng_state=rng_state),
            keep_last=self.options.keep_last,
            is_main=context.is_main,
            barrier=context.barrier if context.is_distributed else None,
        )

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, data position and this rank's RNG from ``folder``
        (`rsfuse.train.state.read_step_files`: an unreadable file raises `CheckpointReadError` naming it)."""
        read_step_files(self, Path(folder))

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
            batch_sampler=IndexBatches(batches),
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
        counts[-1] = sum(_sequence_tokens(b) for b in micro_batches)
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
            batch_sampler=IndexBatches(batches),
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

    def _save_on_interrupt(self) -> Path | None:
        """Ctrl-C / SIGTERM: the checkpoint holding every finished step (saved now unless the newest one already
        does; RNG as at the start of the step that was cut short), None under torchrun or before the first step."""
        if self.context.is_distributed or self.state.step == 0:
            return None
        latest = find_latest_checkpoint(self.checkpoint_root)
        if latest is not None and latest.name == f"step_{self.state.step}":
            return latest
        self.model.zero_grad(set_to_none=True)
        return self.save(rng_state=self._rng_at_step_start)

    def run(self, *, resume_step: int | None = None) -> TrainState:
        """Train until ``options.total_steps`` optimizer steps are done; returns the final state. Ctrl-C / SIGTERM
        (`TrainingInterrupted`, `KeyboardInterrupt`) save the finished steps first (one process), then raise
        `TrainingInterrupted` with ``step`` and ``checkpoint`` set."""
        try:
            return self._run(resume_step=resume_step)
        except (KeyboardInterrupt, TrainingInterrupted) as interrupt:
            stopped = interrupt if isinstance(interrupt, TrainingInterrupted) else TrainingInterrupted(2)
            stopped.step = self.state.step
            stopped.checkpoint = self._save_on_interrupt()
            raise stopped from None

    def _run(self, *, resume_step: int | None = None) -> TrainState:
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
                    self._rng_at_step_start = None  # between steps the current RNG state is the next step's
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
