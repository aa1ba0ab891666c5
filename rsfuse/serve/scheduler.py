"""Continuous batching: one background thread drives one ``GenerationSession`` for every request.

Each turn of the worker's loop: run queued calls (the page's pictures use the model between steps), drop cancelled
rows (a client that went away), prefill waiting requests into the free rows (``session.add``, several prompts per
call, grouped so that each group's padded length plus its longest ``max_tokens`` fits the cache), decode one step for
all rows (``session.step``) and read the new tokens (``session.poll``). A finished row is released at once and its
slot takes the next waiting request on the next turn, while the other rows keep decoding. When the worker is idle, the
first arrival waits up to ``max_wait_ms`` for companions so that requests that arrive together share their steps.

The session is created on, and only ever touched from, the worker thread, and the app runs its tensor work there too
(prompt encoding and the page's pictures go through `Scheduler.call`): on the CPU it must be the only thread that
computes. OpenMP (libgomp, which PyTorch's CPU kernels use) keeps a team of threads for every thread that ran a
parallel region, for as long as that thread lives; with more of them than cores it stops spin-waiting between
regions, and the worker's many small kernels then each pay a wake-up: encoding an image took 1.6x as long
(``bench/compute_thread.py``; BENCHMARKS.md, "rsfuse serve under load"). Requests hand over a `Job` whose ``sink`` receives ``("tokens", ids)``,
``("done", finish_reason)`` or ``("error", APIError)`` from the worker thread.
"""

import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rsfuse.generation import GenerationSession, SamplingParams
from rsfuse.serve.errors import APIError
from rsfuse.serve.inputs import EncodedPrompt

__all__ = ["Job", "Scheduler"]

log = logging.getLogger("rsfuse.serve")


@dataclass(eq=False)
class Job:
    prompt: EncodedPrompt
    params: SamplingParams
    sink: Callable[[tuple[str, Any]], None]
    cancelled: bool = False
    row: int | None = None
    submitted: float = field(default_factory=time.monotonic)


class Scheduler:
    """The worker thread and its queue. ``max_queue`` waiting requests at most (429 beyond)."""

    def __init__(
        self,
        model,
        *,
        batch: Callable[[list[EncodedPrompt]], dict],
        max_batch: int,
        max_length: int,
        max_wait_ms: float = 10.0,
        decode: Callable[[list[int]], str] | None = None,
        pad_token_id: int | None = None,
        max_queue: int = 256,
        sync_every: int = 1,
        compile: bool = False,
        seed: int | None = None,
    ) -> None:
        def open_session() -> GenerationSession:  # on the worker thread (see the module's docstring)
            generator = None if seed is None else torch.Generator(device=model.device).manual_seed(seed)
            return GenerationSession(model, max_batch=max_batch, max_length=max_length, compile=compile,
                                     generator=generator, decode=decode, pad_token_id=pad_token_id)

        self._open_session = open_session
        self._batch = batch  # encoded prompts → one laid-out batch (``PromptEncoder.batch``)
        self.session: GenerationSession | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.max_batch, self.max_length = max_batch, max_length
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.sync_every = max(1, sync_every)
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._running: dict[int, Job] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="rsfuse-serve-worker", daemon=True)
        self.stats = {"steps": 0, "prefills": 0, "admitted": 0, "finished": 0, "cancelled": 0,
                      "row_steps": 0, "max_rows_in_step": 0, "max_prompts_in_prefill": 0}

    # ----- requests' side (any thread) ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (once; later calls only wait); returns once its session is open (raises what
        opening it raised)."""
        if not self._thread.is_alive() and not self._ready.is_set():
            self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def load(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._pending), "max_batch": self.max_batch}

    def snapshot(self) -> dict[str, Any]:
        """`load` and a copy of ``stats``, read at one moment: a row leaves ``running`` together with its counter."""
        with self._cond:
            return {**self.load(), "stats": dict(self.stats)}

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._pending) >= self.max_queue:
                raise APIError(429, f"{len(self._pending)} requests are waiting already; try again later",
                               type="rate_limit_error", code="queue_full")
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Forget ``job`` (its client went away): dropped if waiting, its row freed before the next step."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def call(self, function: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``function()`` on the worker thread between two steps (exclusive use of the model)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            self._calls.append((function, future))
            self._cond.notify()
        return future

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ----- the worker thread -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.session = self._open_session()
        except BaseException as error:  # noqa: BLE001 - start() raises it in the caller's thread
            self._startup_error = error
            with self._cond:
                self._stopping = True
            return
        finally:
            self._ready.set()
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._pending or self._running or self._calls):
                        self._cond.wait()
                    if self._stopping:
                        break
                    if self._pending and not self._running and self.max_wait > 0:
                        deadline = time.monotonic() + self.max_wait
                        # Wait for companions, but run queued calls (prompts being encoded) at once.
                        while (not self._stopping and not self._calls
                               and len(self._pending) < len(self.session.free_rows)
                               and (left := deadline - time.monotonic()) > 0):
                            self._cond.wait(left)
                    calls = list(self._calls)
                    self._calls.clear()
                    arrivals = self._take_pending()
                for function, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(function())
                        except BaseException as error:  # noqa: BLE001 - handed to the caller
                            future.set_exception(error)
                self._reap_cancelled()
                if arrivals:
                    self._admit(arrivals)
                if self._running:
                    self.session.step()
                    self.stats["steps"] += 1
                    self.stats["row_steps"] += len(self._running)
                    self.stats["max_rows_in_step"] = max(self.stats["max_rows_in_step"], len(self._running))
                    if self.stats["steps"] % self.sync_every == 0:
                        self._poll()
        except BaseException:  # a bug in the model or the session: every request learns it, the server says so
            log.exception("rsfuse serve: the generation worker failed")
            with self._cond:
                self._stopping = True
        finally:
            self._fail_all(APIError(503, "the server is shutting down or its generation worker stopped",
                                    type="server_error", code="unavailable"))

    def _take_pending(self) -> list[Job]:
        free = len(self.session.free_rows)
        taken: list[Job] = []
        while self._pending and len(taken) < free:
            job = self._pending.popleft()
            if job.cancelled:
                self.stats["cancelled"] += 1
            else:
                taken.append(job)
        return taken

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Split arrivals into prefill batches whose padded length + longest ``max_tokens`` fits the cache."""
        groups, remaining = [], list(jobs)
        while remaining:
            group, rest = [remaining[0]], []
            for job in remaining[1:]:
                members = [*group, job]
                needed = max(m.prompt.length for m in members) + max(m.params.max_new_tokens for m in members)
                (group if needed <= self.max_length else rest).append(job)
            groups.append(group)
            remaining = rest
        return groups

    def _admit(self, jobs: list[Job]) -> None:
        for group in self._groups(jobs):
            try:
                self._add(group)
            except Exception as error:  # noqa: BLE001 - one bad prompt must not fail its companions
                if len(group) == 1:
                    log.warning("rsfuse serve: prefill failed: %s", error)
                    self._send(group[0], ("error", APIError(400 if isinstance(error, ValueError) else 500,
                                                            f"generation failed: {error}", code="generation_failed",
                                                            type="invalid_request_error" if isinstance(error, ValueError)
                                                            else "server_error")))
                    continue
                for job in group:
                    self._admit([job])

    def _add(self, group: list[Job]) -> None:
        rows = self.session.add(**self._batch([job.prompt for job in group]), params=[job.params for job in group])
        with self._cond:
            for row, job in zip(rows, group):
                job.row = row
                self._running[row] = job
            self.stats["prefills"] += 1
            self.stats["admitted"] += len(group)
            self.stats["max_prompts_in_prefill"] = max(self.stats["max_prompts_in_prefill"], len(group))

    def _reap_cancelled(self) -> None:
        for row, job in list(self._running.items()):
            if job.cancelled:
                self._retire(row, "cancelled")

    def _poll(self) -> None:
        for update in self.session.poll():
            job = self._running.get(update.row)
            if job is None:
                continue
            if update.new_tokens:
                self._send(job, ("tokens", update.new_tokens))
            if update.finish_reason is not None:
                self._send(job, ("done", update.finish_reason))
                self._retire(update.row, "finished")

    def _retire(self, row: int, counter: str) -> None:
        """Free ``row`` and count its end, under the lock that `load` / `snapshot` read with (a reader never sees
        the row gone and its counter not yet moved)."""
        self.session.release(row)
        with self._cond:
            del self._running[row]
            self.stats[counter] += 1

    @staticmethod
    def _send(job: Job, event: tuple[str, Any]) -> None:
        if job.cancelled:
            return
        try:
            job.sink(event)
        except Exception:  # noqa: BLE001 - the client's event loop is gone: nothing to tell
            job.cancelled = True

    def _fail_all(self, error: APIError) -> None:
        with self._cond:
            jobs = list(self._pending) + list(self._running.values())
            self._pending.clear()
            calls = list(self._calls)
            self._calls.clear()
        for job in jobs:
            self._send(job, ("error", error))
        for row in list(self._running):
            self.session.release(row)
        self._running.clear()
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
