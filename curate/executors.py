"""Where work units run. The runner plans units and merges results; an executor only runs
`execute_unit` for each unit somewhere (this process, a local process pool, later Ray), so a new
executor never touches a stage."""

from __future__ import annotations

import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import pyarrow.parquet as pq

from curate.manifest import UnitStats
from curate.shard import execute_unit
from curate.stage import Stage, WorkUnit

# Thread pools inside each worker are sized to the cores it was given, so N workers do not each
# start N threads (polars, Arrow, torch, BLAS all read these at import).
_THREAD_ENV = ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "RAYON_NUM_THREADS")


def spawn_pool(workers: int, threads_each: int = 1, **kwargs) -> ProcessPoolExecutor:
    """A spawn-context process pool whose workers size their thread pools to `threads_each`
    (the variables are read at import, so they are set only while the workers start)."""
    saved = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update(dict.fromkeys(_THREAD_ENV, str(threads_each)))
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), **kwargs)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Executor(ABC):
    name: str = "executor"

    @abstractmethod
    def workers_for(self, stage: Stage, n_units: int) -> int: ...

    @abstractmethod
    def run(
        self, stage: Stage, units: list[WorkUnit], out_dir: Path, state_path: Path | None
    ) -> Iterator[UnitStats]:
        """Run every unit; yield each unit's stats as it finishes (any order)."""

    def fit_state(self, stage: Stage, units: list[WorkUnit], out_dir: Path) -> Path | None:
        """Fit a global stage in the executor's own distributed way and write its state table;
        None (the default): the runner calls `stage.fit` in this process."""
        return None


class InProcessExecutor(Executor):
    name = "inprocess"

    def workers_for(self, stage: Stage, n_units: int) -> int:
        return 1

    def run(self, stage, units, out_dir, state_path):
        if not units:
            return
        _load_state(stage, state_path)
        stage.setup()
        try:
            for unit in units:
                yield execute_unit(stage, unit, out_dir)
        finally:
            stage.teardown()


# -- local process pool -----------------------------------------------------------------------
_worker_stage: Stage | None = None


def _init_worker(stage: Stage, state_path: str | None) -> None:
    global _worker_stage
    _load_state(stage, Path(state_path) if state_path else None)
    stage.setup()
    _worker_stage = stage


def _run_in_worker(unit: WorkUnit, out_dir: str) -> UnitStats:
    assert _worker_stage is not None, "worker was not initialised"
    return execute_unit(_worker_stage, unit, Path(out_dir))


def _load_state(stage: Stage, state_path: Path | None) -> None:
    if stage.is_global:
        stage.load_state(pq.read_table(state_path) if state_path and state_path.exists() else None)


class LocalExecutor(Executor):
    """A process pool on this machine; one worker per `stage.resources.cpus` cores."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def workers_for(self, stage: Stage, n_units: int) -> int:
        cores = self.workers or os.cpu_count() or 1
        per_worker = max(1, int(stage.resources.cpus))
        n = max(1, cores // per_worker) if self.workers is None else self.workers
        if stage.resources.max_workers:
            n = min(n, stage.resources.max_workers)
        return max(1, min(n, n_units))

    def run(self, stage, units, out_dir, state_path):
        n = self.workers_for(stage, len(units))
        if n == 1:
            # One worker: skip process start-up and run here (models load once either way).
            yield from InProcessExecutor().run(stage, units, out_dir, state_path)
            return
        pool = spawn_pool(n, max(1, int(stage.resources.cpus)), initializer=_init_worker,
                          initargs=(stage, str(state_path) if state_path else None))
        with pool:
            # Bounded submission: at most 2 units queued per worker, so a million-unit plan
            # does not sit in memory as futures.
            pending: set[Future] = set()
            queue = iter(units)
            for unit in queue:
                pending.add(pool.submit(_run_in_worker, unit, str(out_dir)))
                if len(pending) >= 2 * n:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(_run_in_worker, nxt, str(out_dir)))


def make_executor(engine: str = "local", *, workers: int | None = None, address: str | None = None) -> Executor:
    if engine == "local":
        return LocalExecutor(workers)
    if engine == "inprocess":
        return InProcessExecutor()
    if engine == "ray":
        try:
            from curate.ray_executor import RayExecutor
        except ImportError as exc:
            raise RuntimeError(
                "the Ray engine needs the 'ray' extra: pip install 'trace-curate[ray]'"
            ) from exc
        return RayExecutor(address=address, workers=workers)
    raise ValueError(f"unknown engine {engine!r}; choose local, inprocess or ray")
