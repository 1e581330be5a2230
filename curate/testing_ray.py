"""Stages used by the Ray engine's tests. They live in the package (not under tests/) because Ray
worker processes unpickle them by module path, and a pipeline can name them as
`stage: curate.testing_ray:KillOnceStage`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

from curate.stage import BatchResult, Resources, Stage, StageConfig


class KillOnceConfig(StageConfig):
    # Created by the attempt that kills itself; its presence means "already killed once".
    marker: str
    # The unit whose first attempt dies after its first batch (a partial shard is in flight).
    kill_unit: int = 0
    # kill: SIGKILL the worker (Ray retries the unit); raise: a Python error (Ray does not retry
    # it, the stage fails, and the next run resumes from the committed shards).
    action: Literal["kill", "raise"] = "kill"
    # Every setup() appends a line here, so a test can count how often workers were set up.
    setups_log: str | None = None


class KillOnceStage(Stage[KillOnceConfig]):
    """Copies rows, adding `kill__worker_pid`; the first attempt at unit `kill_unit` SIGKILLs its
    own worker process in the middle of the unit (after one batch has gone to the shard writer)."""

    name = "kill_once"
    config_model = KillOnceConfig
    score_namespace = "kill"
    batch_rows = 50
    requires = ("trace_id",)

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("worker_pid"), pa.int64())]

    def setup(self) -> None:
        if self.config.setups_log:
            with open(self.config.setups_log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        self._batches_in_unit: dict[int, int] = {}

    def process(self, batch: pa.Table) -> BatchResult:
        ctx = self.unit_context
        if ctx is not None and ctx.unit.index == self.config.kill_unit:
            seen = self._batches_in_unit.get(ctx.unit.index, 0)
            self._batches_in_unit[ctx.unit.index] = seen + 1
            marker = Path(self.config.marker)
            if seen == 1 and not marker.exists():
                marker.write_text(str(os.getpid()))
                if self.config.action == "raise":
                    raise RuntimeError(f"unit {ctx.unit.index} failed on purpose")
                os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-unit: no cleanup runs
        pid = pl.Series(self.col("worker_pid"), [os.getpid()] * batch.num_rows, pl.Int64)
        return BatchResult(batch.append_column(self.col("worker_pid"), pid.to_arrow()))


class KillOnceModelStage(KillOnceStage):
    """The same, declared stateful (it "holds a model"): the Ray engine runs it in an actor pool,
    `setup()` once per actor, and restarts a killed actor."""

    name = "kill_once_model"
    resources = Resources(cpus=1.0, stateful=True)


def local_test_engine():
    """The local cluster the Ray tests share: 2 CPUs and 2 *logical* GPUs. Ray grants logical GPUs
    like real ones (an id each, CUDA_VISIBLE_DEVICES set), so tests see what GPU stages are given
    without a GPU; stages that really need CUDA are not run on it."""
    from curate.ray_executor import RayExecutor

    return RayExecutor(workers=2, num_gpus=2)


class GpuProbeConfig(StageConfig):
    setups_log: str


class GpuProbeStage(Stage[GpuProbeConfig]):
    """Records the GPUs Ray granted its worker: `probe__gpus` on every row, a line per setup()."""

    name = "gpu_probe"
    config_model = GpuProbeConfig
    score_namespace = "probe"
    requires = ("trace_id",)
    resources = Resources(cpus=1, gpus=1, stateful=True)

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("gpus"), pa.string())]

    def setup(self) -> None:
        import ray

        self._gpus = ",".join(str(g) for g in sorted(ray.get_gpu_ids()))
        with open(self.config.setups_log, "a") as handle:
            handle.write(f"{os.getpid()} {self._gpus} {os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")

    def process(self, batch: pa.Table) -> BatchResult:
        return BatchResult(batch.append_column(self.col("gpus"), pa.array([self._gpus] * batch.num_rows)))


class TensorParallelProbeStage(GpuProbeStage):
    """The same, declared as one engine over a tensor-parallel group of 2 GPUs."""

    name = "gpu_probe_tp"
    resources = Resources(cpus=1, gpus=2, stateful=True)
