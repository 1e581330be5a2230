"""CPU stand-ins of the GPU stages, for the Ray engine's tests (tests/test_ray_gpu_stages.py).

On a GPU cluster the logit cache and generation run as actor pools with one engine per GPU. Here
the same stages run with the resources a CPU cluster can grant (an actor per CPU), so the actor
path is exercised for real: the model is loaded once per actor, units are split among actors, and
a unit whose actor is SIGKILLed halfway resumes on another from the unit's scratch (the cache's
finished batches, the generator's log of finished requests). A separate module from
curate/testing_ray.py so that stages which need no model do not import transformers in workers.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pydantic import BaseModel

from curate.generators.generate import GenerateConfig, GenerateStage
from curate.stage import BatchResult, Resources
from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage


class KillOptions(BaseModel):
    # Created by the attempt that kills itself; its presence means "already killed once".
    kill_marker: str | None = None
    # The unit whose first attempt dies right after its first batch is finished (and saved in the
    # unit's scratch), before the unit's shard is written.
    kill_unit: int = 0
    # Every setup() appends its pid here: a test counts engines loaded.
    setups_log: str | None = None


class _KillAfterFirstBatch:
    config: KillOptions

    def setup(self) -> None:
        if self.config.setups_log:
            with open(self.config.setups_log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        super().setup()  # type: ignore[misc]

    def process(self, batch) -> BatchResult:
        result = super().process(batch)  # type: ignore[misc]
        ctx, cfg = self.unit_context, self.config  # type: ignore[attr-defined]
        if cfg.kill_marker and ctx is not None and ctx.unit.index == cfg.kill_unit:
            marker = Path(cfg.kill_marker)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)  # an engine lost mid-unit: no cleanup runs
        return result


class CpuCacheConfig(CacheLogitsConfig, KillOptions):
    pass


class CpuCacheLogitsStage(_KillAfterFirstBatch, CacheLogitsStage):
    """`cache_logits` (transformers teacher) placed as on a CPU cluster: an actor per CPU."""

    config_model = CpuCacheConfig
    resources = Resources(cpus=1, stateful=True)
    batch_rows = 3


class CpuGenerateConfig(GenerateConfig, KillOptions):
    pass


class CpuGenerateStage(_KillAfterFirstBatch, GenerateStage):
    """`generate` with local-engine teachers (`hf:` here, `vllm:` on GPUs) placed one engine per
    worker, no single-worker cap: units are split among the engines (data parallel)."""

    config_model = CpuGenerateConfig

    def __init__(self, config: CpuGenerateConfig | None = None):
        super().__init__(config)
        self.resources = Resources(cpus=1, stateful=True)
