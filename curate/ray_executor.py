"""The Ray engine: every work unit of a stage runs on a Ray cluster through Ray Data.

`curate run PIPELINE --engine ray [--address ADDR]` plans, skips, resumes and fits exactly as the
local engine does (curate/runner.py); only `run` differs. The units become a Ray Dataset with one
unit per block, and `map_batches` hands each unit to `execute_unit`, which reads the unit's
Parquet row groups, calls the stage over Arrow batches and writes the unit's shard atomically
(temp file, fsync, rename; counters first, shard last). So:

* the run layout, manifests, rejects and side outputs are byte-for-byte the local engine's;
* a unit is the unit of retry: a worker killed mid-unit leaves only a temp file, Ray retries the
  unit (task `max_retries`; actor `max_restarts` + `max_task_retries`), and a retried unit whose
  shard was already committed returns the saved counters instead of writing again. No row is
  lost or written twice, and a killed driver resumes from the committed shards.

Why units and not `read_parquet(...).map_batches(...).write_parquet(...)` over rows: Ray Data's
block boundaries and output file names are not stable across runs, and `write_parquet` commits
files with no per-slice record, so a resumed or retried run could neither tell which rows were
done nor avoid writing them twice. Units are deterministic slices (row groups of the input), so
"shard exists" is an exact, cheap commit record. Inside a unit the stage still sees streamed Arrow
batches of `stage.batch_rows` rows, the same as on one machine.

Placement follows `stage.resources`: a stage that holds a model (`stateful=True`) or needs GPUs
runs in an actor pool of `num_cpus=cpus, num_gpus=gpus` actors, each calling `stage.setup()` once
and then running many units (embeddings, vLLM generation and logit caching: one engine per GPU
with `gpus=1`, or per tensor-parallel group with `gpus=TP`). Every other stage runs as Ray tasks of
`cpus` CPUs; a global stage's fit state is cached by the (reused) task worker process, so it is
read once per worker, not once per unit. Input and run folders must be on a filesystem every node
mounts at the same path (NFS, Lustre, EFS, a FUSE-mounted bucket).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.executors import _THREAD_ENV, Executor, _load_state
from curate.manifest import UnitStats
from curate.shard import execute_unit
from curate.stage import Stage, WorkUnit

log = logging.getLogger("curate")

# A unit that kills its worker this many times in a row is a bug (e.g. out of memory on every
# attempt), not bad luck: fail the stage with Ray's error instead of retrying forever.
DEFAULT_MAX_RETRIES = 3
# Written next to `_state.parquet` by a distributed fit: its waves, partitions, peak RSS per task.
FIT_STATS = "_fit_stats.json"


def _stats_table(stats: list[UnitStats]) -> pa.Table:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return pa.table({
        "stats": pa.array([s.model_dump_json() for s in stats], pa.string()),
        "worker_pid": pa.array([os.getpid()] * len(stats), pa.int64()),
        "worker_peak_rss": pa.array([peak] * len(stats), pa.int64()),
    })


def _units_of(batch: pa.Table) -> list[WorkUnit]:
    return [WorkUnit.from_json(json.loads(text)) for text in batch.column("unit").to_pylist()]


# The fit state of a global stage, kept by a reused task worker between units of the same step
# (Ray reuses worker processes for tasks), so a 10M-row state is read once per worker, not per unit.
_STATE_CACHE: dict[tuple, pa.Table | None] = {}


def _load_state_cached(stage: Stage, state_path: str | None) -> None:
    if not stage.is_global:
        return
    path = Path(state_path) if state_path else None
    if path is None or not path.exists():
        stage.load_state(None)
        return
    info = path.stat()
    key = (str(path), info.st_mtime_ns, info.st_size)
    if key not in _STATE_CACHE:
        _STATE_CACHE.clear()  # one step at a time: never hold two states
        _STATE_CACHE[key] = pq.read_table(path)
    stage.load_state(_STATE_CACHE[key])


def run_units_task(batch: pa.Table, *, stage: Stage, out_dir: str, state_path: str | None) -> pa.Table:
    """Stateless path: one Ray task per unit; setup/teardown per unit, as the stage declared it
    has nothing worth keeping (stateful=False)."""
    _load_state_cached(stage, state_path)
    stage.setup()
    try:
        return _stats_table([execute_unit(stage, unit, Path(out_dir)) for unit in _units_of(batch)])
    finally:
        stage.teardown()


class UnitActor:
    """Stateful path: an actor loads the fit state and calls `stage.setup()` once (a model, an
    engine per GPU), then runs many units. Ray restarts a dead actor (setup again) and retries
    the unit it held."""

    def __init__(self, stage: Stage, out_dir: str, state_path: str | None):
        _load_state(stage, Path(state_path) if state_path else None)
        stage.setup()
        self.stage, self.out_dir = stage, Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _stats_table([execute_unit(self.stage, unit, self.out_dir) for unit in _units_of(batch)])

    def __del__(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown: no one left to tell
                stage.teardown()


def uses_actors(stage: Stage) -> bool:
    """An actor pool for stages that declare per-worker state worth keeping (a model, an engine,
    a GPU); stateless Ray tasks for the rest (worker processes are reused either way)."""
    return bool(stage.resources.stateful or stage.resources.gpus)


class RayExecutor(Executor):
    """Runs units on a Ray cluster: the local one it starts, or `address` ("auto", "host:6379",
    "ray://host:10001")."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        runtime_env: dict[str, Any] | None = None,
        num_gpus: int | None = None,
    ):
        self.address = address
        self.workers = workers
        # GPUs of a cluster this executor starts itself (Ray detects real ones; tests declare
        # logical GPUs to see what GPU stages are granted).
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        # Filled by `run`: pid -> peak RSS of every worker that ran a unit (for benches, docs).
        self.worker_peak_rss: dict[int, int] = {}
        self.last_fit_stats: dict[str, Any] | None = None

    # -- cluster ---------------------------------------------------------------------------
    def ensure_ray(self):
        import ray

        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False,
                                  "logging_level": logging.WARNING}
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        if self.address:
            kwargs["address"] = self.address
        else:
            # A private cluster on this machine: no token file in the user's home directory.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            if self.workers:
                kwargs["num_cpus"] = self.workers
            if self.num_gpus is not None:
                kwargs["num_gpus"] = self.num_gpus
        ray.init(**kwargs)
        return ray

    def _cluster(self) -> tuple[float, float]:
        ray = self.ensure_ray()
        total = ray.cluster_resources()
        return float(total.get("CPU", 0)), float(total.get("GPU", 0))

    def _largest_node_cpus(self) -> float:
        ray = self.ensure_ray()
        return max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0)

    def cpus_per_worker(self, stage: Stage) -> float:
        """The stage's CPUs per worker, but never more than one node has (a stage that sizes itself
        to the driver's cores, like the math verifier's pool, would otherwise never be placed)."""
        return max(0.0, min(float(stage.resources.cpus), self._largest_node_cpus()))

    def workers_for(self, stage: Stage, n_units: int) -> int:
        cpus, gpus = self._cluster()
        res = stage.resources
        if res.gpus and gpus < res.gpus:
            raise RuntimeError(
                f"stage {stage.name} needs {res.gpus:g} GPU(s) per worker; the Ray cluster "
                f"({self.address or 'local'}) has {gpus:g}. Point --address at a cluster with GPUs."
            )
        per = self.cpus_per_worker(stage)
        n = int(cpus // per) if per else int(cpus)
        if res.gpus:
            n = min(n, int(gpus // res.gpus))
        if self.workers:
            n = min(n, self.workers)
        if res.max_workers:
            n = min(n, res.max_workers)
        return max(1, min(n, n_units))

    # -- global steps ----------------------------------------------------------------------
    def fit_state(self, stage: Stage, units: list[WorkUnit], out_dir: Path) -> Path | None:
        """Fit a global stage on the cluster when it has a distributed form (MinHash: partitioned
        bands and iterated joins, curate/ray_global.py) and write `<step>/_state.parquet`;
        None when it has none (the runner then calls `stage.fit` in the driver)."""
        from curate.io import STATE, atomic_write_json
        from curate.ray_global import DISTRIBUTED_FITS, ray_map

        fit = DISTRIBUTED_FITS.get(stage.name)
        if fit is None or not stage.is_global:
            return None
        self.ensure_ray()
        path = Path(out_dir) / STATE
        if not path.exists():
            self.last_fit_stats = fit(stage, units, Path(out_dir) / "_fit", path,
                                      task_map=ray_map(max_retries=self.max_retries))
            # Waves, partitions and peak memory per task: how the fit scaled, for the user (and
            # the proof, in tests, that the distributed fit ran rather than the driver's).
            atomic_write_json(Path(out_dir) / FIT_STATS, self.last_fit_stats)
        return path

    def placement(self, stage: Stage, n_units: int) -> dict[str, Any]:
        """What the stage's workers ask Ray for: an actor pool (model-holding and GPU stages) or
        tasks, how many at once, and CPUs and GPUs each. With `gpus=1` that is one engine per GPU;
        with `gpus=TP` one per tensor-parallel group, and units are split among them."""
        out: dict[str, Any] = {"actors": uses_actors(stage), "workers": self.workers_for(stage, n_units),
                               "num_cpus": self.cpus_per_worker(stage)}
        if stage.resources.gpus:
            out["num_gpus"] = stage.resources.gpus
        return out

    # -- run -------------------------------------------------------------------------------
    def run(self, stage, units, out_dir, state_path) -> Iterator[UnitStats]:
        if not units:
            return
        ray = self.ensure_ray()
        from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the runner draws one bar in rows
        ctx.print_on_execution_start = False
        place = self.placement(stage, len(units))
        n, per_worker = place["workers"], place["num_cpus"]
        threads = str(max(1, int(per_worker)))
        items = [{"unit": json.dumps(u.to_json())} for u in units]
        # One unit per block and per call: a unit is the unit of scheduling and of retry.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        common: dict[str, Any] = {
            "batch_size": 1,
            "batch_format": "pyarrow",
            "zero_copy_batch": True,
            "num_cpus": per_worker,
            # Thread pools (polars, Arrow, BLAS, torch) sized to the worker's CPUs, not the node's.
            "runtime_env": {"env_vars": dict.fromkeys(_THREAD_ENV, threads)},
        }
        if "num_gpus" in place:
            common["num_gpus"] = place["num_gpus"]
        args = {"stage": stage, "out_dir": str(out_dir), "state_path": str(state_path) if state_path else None}
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote args as keywords but names no replacement for
            # max_retries / max_restarts / max_task_retries yet; bounded retries matter more.
            warnings.simplefilter("ignore", DeprecationWarning)
            if place["actors"]:
                ds = ds.map_batches(
                    UnitActor, fn_constructor_kwargs=args,
                    compute=ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1),
                    max_restarts=self.max_retries, max_task_retries=self.max_retries, **common)
            else:
                ds = ds.map_batches(run_units_task, fn_kwargs=args, compute=TaskPoolStrategy(size=n),
                                    max_retries=self.max_retries, **common)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for text, pid, peak in zip(batch.column("stats").to_pylist(), batch.column("worker_pid").to_pylist(),
                                       batch.column("worker_peak_rss").to_pylist(), strict=True):
                self.worker_peak_rss[pid] = max(peak, self.worker_peak_rss.get(pid, 0))
                yield UnitStats.model_validate_json(text)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
