"""A pool of math-verify worker processes that can be killed and replaced.

Why not `concurrent.futures`: a worker stuck in C code (a huge sympy integer, a pathological
simplification) ignores SIGALRM, and a `ProcessPoolExecutor` cannot kill one worker and go on.
Here each worker has its own pipe and answers item by item, so the parent always knows which item
a silent worker is on: after ``timeout_s + grace`` without an answer the worker is killed, that
item gets the verdict ``timeout`` (method ``killed``), its unfinished chunk is handed to the other
workers and a fresh worker takes its place. A worker that dies on its own (segfault, out of
memory) is treated the same way, with verdict ``error`` after a second death on the same item.

Work is sent in chunks grouped by reference, so the traces of one problem meet a worker that has
already parsed that problem's reference. Workers come from a `forkserver` that has imported
math-verify (and sympy) once: a replacement starts in milliseconds, not seconds, and no worker is
forked from a parent whose polars/Arrow threads could hold a lock.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from curate.verifiers.math_compare import serve

_PRELOAD = ["curate.verifiers.math_compare", "math_verify", "sympy"]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    # Items sent and not yet answered, in the order the worker will run them.
    pending: deque = field(default_factory=deque)
    last_progress: float = field(default_factory=time.monotonic)
    ready: bool = False


class MathVerifyPool:
    """``run([(pred, ref), ...]) -> [(verdict, method), ...]`` over ``workers`` processes."""

    def __init__(self, workers: int, timeout_s: float, float_rounding: int = 6, *, chunk_size: int = 16,
                 grace_s: float | None = None, start_timeout_s: float = 120.0, target: Callable = serve):
        self.n_workers = max(1, workers)
        self.timeout_s = timeout_s
        self.float_rounding = float_rounding
        self.chunk_size = chunk_size
        # The alarm fires first; the kill is for workers the alarm could not interrupt.
        self.grace_s = grace_s if grace_s is not None else max(1.0, timeout_s)
        self.start_timeout_s = start_timeout_s
        # The worker loop (tests swap in one that hangs or dies); must be importable by name.
        self.target = target
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._workers: list[_Worker] = []
        self.killed = 0
        self.crashed = 0

    # -- lifecycle -------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=self.target, args=(child, self.timeout_s, self.float_rounding), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def start(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 2
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> MathVerifyPool:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.process.is_alive():
            old.process.kill()
        old.process.join()
        old.conn.close()
        self._workers[index] = self._spawn()

    # -- work ------------------------------------------------------------------------------
    def run(self, pairs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None
            ) -> list[tuple[str, str]]:
        if not pairs:
            return []
        self.start()
        results: list[tuple[str, str] | None] = [None] * len(pairs)
        # Group by reference so a chunk (and so a worker) sees one problem's traces together.
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][1])
        queue: deque[list[int]] = deque(
            order[i : i + self.chunk_size] for i in range(0, len(order), self.chunk_size)
        )
        deaths: dict[int, int] = {}
        remaining = len(pairs)

        def finish(key: int, verdict: str, method: str) -> None:
            nonlocal remaining
            if results[key] is None:
                results[key] = (verdict, method)
                remaining -= 1
                if progress:
                    progress(1)

        def feed(worker: _Worker) -> None:
            # Two chunks in flight: the worker never waits for the parent between chunks.
            while queue and len(worker.pending) < 2 * self.chunk_size:
                chunk = queue.popleft()
                worker.pending.extend(chunk)
                worker.conn.send([(k, pairs[k][0], pairs[k][1]) for k in chunk])
                if len(worker.pending) == len(chunk):
                    worker.last_progress = time.monotonic()

        def fail(index: int, why: str) -> None:
            worker = self._workers[index]
            if not worker.ready:
                # Dying before the first answer is no bad input but a broken worker: respawning
                # it would loop forever.
                worker.process.join(5)
                raise RuntimeError(
                    f"math-verify worker exited while starting (exit code {worker.process.exitcode}); "
                    "see its error above")
            if worker.pending:
                head = worker.pending.popleft()
                if why == "killed":
                    finish(head, "timeout", "killed")
                else:
                    deaths[head] = deaths.get(head, 0) + 1
                    if deaths[head] >= 2:
                        finish(head, "error", "worker_died")
                    else:
                        worker.pending.appendleft(head)
                rest = [k for k in worker.pending if results[k] is None]
                if rest:
                    queue.appendleft(rest)
            self.killed += why == "killed"
            self.crashed += why != "killed"
            self._replace(index)

        while remaining:
            for worker in self._workers:
                if worker.ready:
                    feed(worker)
            by_conn = {id(w.conn): i for i, w in enumerate(self._workers)}
            now = time.monotonic()
            deadlines = [
                w.last_progress + (self.timeout_s + self.grace_s if w.ready else self.start_timeout_s)
                for w in self._workers if w.pending or not w.ready
            ]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 1.0
            for conn in wait([w.conn for w in self._workers], timeout=wait_s):
                index = by_conn[id(conn)]
                worker = self._workers[index]
                try:
                    while conn.poll():
                        key, verdict, method = conn.recv()
                        worker.last_progress = time.monotonic()
                        if key == "ready":
                            worker.ready = True
                            continue
                        if worker.pending and worker.pending[0] == key:
                            worker.pending.popleft()
                        finish(key, verdict, method)
                except (EOFError, OSError):
                    fail(index, "crashed")
            now = time.monotonic()
            for index, worker in enumerate(self._workers):
                limit = self.timeout_s + self.grace_s if worker.ready else self.start_timeout_s
                if (worker.pending or not worker.ready) and now - worker.last_progress > limit:
                    if not worker.ready:
                        raise RuntimeError(f"math-verify worker did not start within {limit:.0f}s")
                    fail(index, "killed")
        return results  # type: ignore[return-value]
