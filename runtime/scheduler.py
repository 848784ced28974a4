"""What the cloud server shares between connections: the memory budget of frames in flight and the fair
batching scheduler of inference (runtime/cloud.py explains the policy; these are its mechanisms)."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


# -- memory budget ----------------------------------------------------------------------------------

class MemoryBudget:
    """Bytes reserved by frames being read or served.  `peak` is the most ever reserved at once, which
    `reserve` keeps at or below `limit`; `waiting` counts connections waiting for a reservation."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waiting = 0
        self._closed = False
        self._cond = threading.Condition()

    def reserve(self, n: int, deadline: float) -> bool:
        """Take n bytes, waiting until `deadline` (time.monotonic) for other frames to give theirs back."""
        with self._cond:
            self.waiting += 1
            try:
                while self.used + n > self.limit:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        return False
                    self._cond.wait(left)
            finally:
                self.waiting -= 1
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# -- fair scheduler ---------------------------------------------------------------------------------

class Job:
    """One request's samples in the scheduler: `taken` handed to batches, `done` answered."""

    __slots__ = ("x", "n", "taken", "done", "in_flight", "logits", "error", "finished")

    def __init__(self, x: np.ndarray):
        self.x = x
        self.n = len(x)
        self.taken = self.done = 0
        self.in_flight = False  # at most one chunk of a job runs at a time: its chunks finish in order
        self.logits: np.ndarray | None = None
        self.error: BaseException | None = None
        self.finished = False


@dataclass
class Batch:
    pieces: list[tuple[Job, int, int]]  # (job, first sample, samples)
    bulk: bool = False  # only chunks of requests larger than one batch

    def inputs(self) -> np.ndarray:
        if len(self.pieces) == 1:
            job, start, count = self.pieces[0]
            return job.x if count == job.n else job.x[start:start + count]
        return np.concatenate([job.x[start:start + count] for job, start, count in self.pieces])


class FairScheduler:
    """Batches requests of all connections, each batch shared max-min fairly (see the module doc).

    `infer(x)` blocks until x's logits are ready; the calling threads run the batches themselves
    (`take`, run, `finish`), at most `workers` at a time, except batches of bulk work only (chunks
    of requests larger than one batch): those go to runner threads at OS priority `bulk_nice`
    (Linux: a thread may lower its own priority), so a small request's run beside them gets the
    cores first.  `submit`, `take` and `finish` are public so the order can be tested without threads.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch_samples: int = 32, workers: int = 1,
                 bulk_nice: int = 10):
        if batch_samples < 1 or workers < 1:
            raise ValueError(f"batch_samples and workers must be >= 1, got {batch_samples} and {workers}")
        self.run = run
        self.batch_samples = batch_samples
        self.workers = workers
        self.bulk_nice = bulk_nice
        self.busy = 0
        self.batches = 0
        self._jobs: list[Job] = []  # in arrival order
        self._closed = False
        self._cond = threading.Condition(threading.RLock())
        self._bulk: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._runners: list[threading.Thread] = []

    def submit(self, x: np.ndarray) -> Job:
        job = Job(x)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is stopping")
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def take(self) -> Batch | None:
        """The next batch for a free worker, or None (no worker free, or nothing it may run)."""
        with self._cond:
            free = self.workers - self.busy
            if free <= 0 or self._closed:
                return None
            ready = [j for j in self._jobs if not j.in_flight and j.taken < j.n]
            if free == 1 and self.workers > 1:  # a request that fits one batch must find a worker soon
                ready = [j for j in ready if j.n <= self.batch_samples]
            if not ready:
                return None
            # Max-min fair shares: the smallest needs are met in full, what is left is split evenly
            # (sorting is stable: equal needs keep their arrival order).
            ready.sort(key=lambda j: j.n - j.taken)
            pieces, left = [], self.batch_samples
            for i, job in enumerate(ready):
                if left == 0:
                    break
                count = min(job.n - job.taken, max(left // (len(ready) - i), 1))
                pieces.append((job, job.taken, count))
                job.taken += count
                job.in_flight = True
                left -= count
            self.busy += 1
            self.batches += 1
            return Batch(pieces, all(job.n > self.batch_samples for job, _, _ in pieces))

    def finish(self, batch: Batch, logits: np.ndarray | None = None, error: BaseException | None = None) -> None:
        """Hand a batch's logits (or its error) back to its jobs."""
        with self._cond:
            self.busy -= 1
            offset = 0
            for job, start, count in batch.pieces:
                job.in_flight = False
                if error is not None or logits is None:
                    job.error = error or RuntimeError("no logits")
                    job.finished = True
                else:
                    part = logits[offset:offset + count]
                    if count == job.n:
                        job.logits = part
                    else:
                        if job.logits is None:
                            job.logits = np.empty((job.n, *logits.shape[1:]), logits.dtype)
                        job.logits[start:start + count] = part
                    job.done += count
                    job.finished = job.done == job.n
                offset += count
                if job.finished:
                    self._jobs.remove(job)
            self._cond.notify_all()

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x's logits, once every chunk of it has run (in this thread's batches or others')."""
        job = self.submit(x)
        while True:
            with self._cond:
                batch = None
                while not job.finished and (batch := self.take()) is None:
                    if self._closed:
                        raise RuntimeError("the server is stopping")
                    self._cond.wait()
                if batch is None:
                    break
                if batch.bulk and self.bulk_nice:
                    self._start_runners()
                    self._bulk.put(batch)
                    continue
            self._execute(batch)
        if job.error is not None:
            raise RuntimeError(f"inference failed: {type(job.error).__name__}: {job.error}") from job.error
        assert job.logits is not None
        return job.logits

    def _execute(self, batch: Batch) -> None:
        try:
            out = self.run(batch.inputs())
        except Exception as e:  # noqa: BLE001 - every job in the batch gets it
            self.finish(batch, error=e)
        else:
            self.finish(batch, out)

    def _start_runners(self) -> None:
        # as many as bulk batches can run at once: every worker but the one kept for small requests
        while len(self._runners) < max(self.workers - 1, 1):
            t = threading.Thread(target=self._bulk_loop, name="cloud-bulk", daemon=True)
            self._runners.append(t)
            t.start()

    def _bulk_loop(self) -> None:
        if sys.platform.startswith("linux"):  # per thread there (elsewhere it could renice the whole server)
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.bulk_nice)
            except OSError:
                pass
        while (batch := self._bulk.get()) is not None:
            self._execute(batch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            for _ in self._runners:
                self._bulk.put(None)
