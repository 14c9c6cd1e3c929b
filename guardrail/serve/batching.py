"""Dynamic batching: concurrent requests with equal generation settings share one model call.

A :class:`Batcher` lives on the server's event loop. ``submit`` queues a job and awaits its
result; one worker task takes the oldest job, waits at most ``max_wait_s`` (from that job's
arrival) for up to ``max_batch_size - 1`` more jobs with the same key, and runs them together
in a single worker thread (the model is one, so one batch runs at a time; work that must not
overlap a batch, such as a stream, runs on the same thread through ``run_on_worker``). While a batch runs,
new jobs queue up and form the next batch, so batches grow with the load.

Backpressure: at most ``max_queue`` jobs wait (``reserve`` counts streams too); ``submit``
beyond that raises :class:`QueueFull`, which the server answers with 429 and a
``Retry-After`` estimated from recent batch times. A job whose caller went away before its
batch started is dropped (``cancel``) and never reaches the model.

The batch function is plain: ``run(payloads, key) -> results`` (one result per payload, in
order), so the batcher is tested without a model.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

__all__ = ["Batcher", "BatchStats", "QueueFull"]


class QueueFull(Exception):
    """The queue is full; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class BatchStats:
    """Counters the server exports on ``/metrics``."""

    batches: int = 0
    batched_jobs: int = 0
    cancelled: int = 0
    rejected: int = 0
    batch_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> number of batches


@dataclass(eq=False)
class _Job:
    payload: Any
    key: Hashable
    future: asyncio.Future
    arrived: float


class Batcher:
    """Batch jobs for ``run(payloads, key) -> list[result]`` on one worker thread.

    Args:
        run: called in the worker thread with up to ``max_batch_size`` payloads of equal key.
        max_batch_size: the largest batch (1: one request at a time, no batching).
        max_wait_s: how long the oldest job may wait for company before its batch starts.
        max_queue: jobs allowed to wait (not counting the running batch); more raise QueueFull.
    """

    def __init__(self, run: Callable[[Sequence[Any], Hashable], list], *, max_batch_size: int = 8,
                 max_wait_s: float = 0.01, max_queue: int = 64):
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._pending: deque[_Job] = deque()
        self._reserved = 0  # slots held by streams, which run outside the batches
        self._wakeup: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._running = 0  # jobs in the batch now on the model
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker on the running loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardrail-batch")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="guardrail-batcher")

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, finish the queued and running ones (up to ``timeout_s``), then stop."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while (self._pending or self._running) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(QueueFull(1))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ admission
    @property
    def depth(self) -> int:
        """Jobs waiting plus slots reserved by streams."""
        return len(self._pending) + self._reserved

    @property
    def in_flight(self) -> int:
        return len(self._pending) + self._reserved + self._running

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: queued batches x mean batch time, at least 1."""
        mean = self.stats.batch_seconds / self.stats.batches if self.stats.batches else 1.0
        return max(1, math.ceil(mean * (self.depth / self.max_batch_size + 1)))

    def _admit(self) -> None:
        if self._closing or self.depth >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())

    def reserve(self) -> None:
        """Hold one queue slot for work that runs outside the batches (a stream); :meth:`release` it."""
        self._admit()
        self._reserved += 1

    def release(self) -> None:
        self._reserved = max(0, self._reserved - 1)

    async def submit(self, payload: Any, key: Hashable) -> Any:
        """Queue one job and await its result (raises what the batch raised, or :class:`QueueFull`).

        Cancelling the awaiting task (the caller disconnected) drops the job if its batch has
        not started.
        """
        self._admit()
        job = _Job(payload, key, asyncio.get_running_loop().create_future(), time.monotonic())
        self._pending.append(job)
        self._wakeup.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    async def run_on_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the batches' worker thread, after the running batch (a stream uses this)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def cancel(self, job: _Job) -> None:
        if job in self._pending:
            self._pending.remove(job)
            self.stats.cancelled += 1
        if not job.future.done():
            job.future.cancel()

    # ------------------------------------------------------------------ the worker
    def _take_batch(self) -> list[_Job]:
        first = self._pending[0]
        batch = [j for j in self._pending if j.key == first.key][: self.max_batch_size]
        for j in batch:
            self._pending.remove(j)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending[0]
            # wait for company until the batch is full or the oldest job has waited max_wait_s
            while not self._closing:
                same = sum(1 for j in self._pending if j.key == first.key)
                left = first.arrived + self.max_wait_s - time.monotonic()
                if same >= self.max_batch_size or left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=left)
                except asyncio.TimeoutError:
                    break
            if not self._pending:  # every waiting job was cancelled
                continue
            batch = self._take_batch()
            self._running = len(batch)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run, [j.payload for j in batch],
                                                     batch[0].key)
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} jobs")
            except asyncio.CancelledError:
                for j in batch:
                    if not j.future.done():
                        j.future.cancel()
                raise
            except BaseException as exc:  # every job of the batch gets the error
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
            else:
                for j, r in zip(batch, results):
                    if not j.future.done():
                        j.future.set_result(r)
            finally:
                self._running = 0
                dt = time.perf_counter() - t0
                self.stats.batches += 1
                self.stats.batched_jobs += len(batch)
                self.stats.batch_seconds += dt
                self.stats.sizes[len(batch)] = self.stats.sizes.get(len(batch), 0) + 1
