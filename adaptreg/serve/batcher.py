"""Micro-batching: concurrent requests share inference calls.

Requests queue on the event loop. One worker coroutine takes the oldest request and waits up to
``max_wait_s`` for others to join, until ``max_batch`` rows are queued; then it hands them all to
the one inference thread and, while that runs, keeps queueing new arrivals, which form the next
batch as soon as the thread is free. Under load the wait is skipped (the queue already holds a
full batch), so throughput approaches that of one large ``Predictor.predict`` call; when idle a
request waits at most ``max_wait_s`` extra.

Inside a batch, requests are grouped by what one ``predict`` call can serve: the same snapshot,
and either explicit tasks (one task per row, any mix) or routing with the same threshold. A group
that fails is retried request by request, so one bad request cannot fail the others.

One inference thread, not a pool: torch already spreads one forward pass over the cores, two
passes at once would only compete for them, and the Predictor's tokenizer and timing state are
then never shared between threads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdaptregError
from .metrics import ServeMetrics
from .snapshot import Snapshot

logger = logging.getLogger(__name__)


class Overloaded(AdaptregError):
    """The queue holds too many rows: the client should retry later (HTTP 503)."""


@dataclass(eq=False)
class Job:
    snapshot: Snapshot
    texts: list[str]
    task: str | None
    threshold: float | None
    future: asyncio.Future = field(repr=False)

    def group(self) -> tuple[Any, ...]:
        # rows with a given task never route: the threshold does not matter to them
        return (self.snapshot.id, "task", None) if self.task is not None else (self.snapshot.id, "route", self.threshold)


class MicroBatcher:
    """Queue ``submit``-ted requests and run them in shared inference calls (see the module docstring)."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.005, max_queue: int = 16384, batch_size: int = 32,
                 metrics: ServeMetrics | None = None):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.metrics = metrics or ServeMetrics()
        self._pending: collections.deque[Job] = collections.deque()
        self._pending_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptreg-infer")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="adaptreg-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued get an error."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._pending_rows = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ requests
    async def submit(self, snapshot: Snapshot, texts: list[str], task: str | None = None,
                     threshold: float | None = None) -> list[dict[str, Any]]:
        """Predict ``texts`` with ``snapshot``: the Predictor's rows, each with the ``version`` that answered."""
        if self._worker is None or self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._pending_rows + len(texts) > self.max_queue:
            self.metrics.rejected.inc(value=float(len(texts)))
            raise Overloaded(f"{self._pending_rows} rows are waiting (limit {self.max_queue}): retry shortly")
        job = Job(snapshot, list(texts), task, threshold, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_rows += len(job.texts)
        self.metrics.queue_rows.set(value=float(self._pending_rows))
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup or asyncio.Event()
        while True:
            while not self._pending:
                wakeup.clear()
                await wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while self._pending_rows < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs, rows = [], 0
            while self._pending and (not jobs or rows + len(self._pending[0].texts) <= self.max_batch):
                job = self._pending.popleft()
                self._pending_rows -= len(job.texts)
                if job.future.done():  # the client went away
                    continue
                jobs.append(job)
                rows += len(job.texts)
            self.metrics.queue_rows.set(value=float(self._pending_rows))
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._infer, jobs)
            except Exception as exc:  # noqa: BLE001 - _infer catches per group; this is the executor failing
                outcomes = [exc] * len(jobs)
            self.metrics.inference.observe(time.perf_counter() - t0)
            self.metrics.batch_rows.observe(float(rows))
            self.metrics.batch_requests.observe(float(len(jobs)))
            for job, out in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(out, BaseException):
                    job.future.set_exception(out)
                else:
                    job.future.set_result(out)

    # ------------------------------------------------------------------ inference (the inference thread)
    def _infer(self, jobs: list[Job]) -> list[Any]:
        """Results (row lists) or exceptions, one per job, in order."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group(), []).append(i)
        outcomes: list[Any] = [None] * len(jobs)
        for members in groups.values():
            try:
                for i, rows in zip(members, self._predict([jobs[i] for i in members])):
                    outcomes[i] = rows
            except Exception as exc:  # noqa: BLE001 - isolate the request that failed
                if len(members) == 1:
                    outcomes[members[0]] = exc
                    continue
                for i in members:
                    try:
                        outcomes[i] = self._predict([jobs[i]])[0]
                    except Exception as one:  # noqa: BLE001
                        outcomes[i] = one
        return outcomes

    def _predict(self, jobs: list[Job]) -> list[list[dict[str, Any]]]:
        snap = jobs[0].snapshot
        texts = [t for job in jobs for t in job.texts]
        if jobs[0].task is None:
            rows = snap.predictor.predict(texts, task=None, batch_size=self.batch_size, threshold=jobs[0].threshold)
        else:
            tasks = [job.task for job in jobs for _ in job.texts]
            rows = snap.predictor.predict(texts, task=tasks, batch_size=self.batch_size)
        for r in rows:
            r["version"] = snap.versions.get(r["task"])
            self.metrics.rows.inc(r["task"])
        out, start = [], 0
        for job in jobs:
            out.append(rows[start : start + len(job.texts)])
            start += len(job.texts)
        return out
