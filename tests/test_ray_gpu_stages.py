"""GPU stages on Ray: what they ask the cluster for, one engine per GPU (or per tensor-parallel
group) on a cluster with 2 logical GPUs, and the model-holding actor path of the real logit cache
and generator (CPU stand-ins, a tiny random-weight model): units split among engines, a SIGKILLed
engine's unit resumed from its scratch on another, output equal to the local engine's."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from curate.executors import InProcessExecutor  # noqa: E402
from curate.runner import run_stage  # noqa: E402
from curate.testing_ray import GpuProbeConfig, GpuProbeStage, TensorParallelProbeStage  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from curate.testing_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-ray"), seed=1)


def _files(root: Path, tables: list[pa.Table]) -> Path:
    src = root / "in"
    src.mkdir()
    for i, table in enumerate(tables):  # one unit per file
        pq.write_table(table, src / f"part-{i:05d}.parquet")
    return src


def _ids(n: int, files: int) -> list[pa.Table]:
    return [pa.table({"trace_id": [f"f{i}-{j}" for j in range(n)]}) for i in range(files)]


# -- what GPU stages ask for ------------------------------------------------------------------------
def test_real_gpu_stages_declare_their_gpus_to_ray(ray_engine, tiny):
    from curate.generators.generate import GenerateConfig, GenerateStage
    from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage

    cache = CacheLogitsStage(CacheLogitsConfig(teacher=str(tiny)))
    # 2 CPUs and 1 GPU per engine: the 2-CPU cluster fits one engine, though it has 2 GPUs.
    assert ray_engine.placement(cache, 8) == {"actors": True, "workers": 1, "num_cpus": 2.0, "num_gpus": 1}
    tp = GenerateStage(GenerateConfig(teacher=[f"vllm:{tiny} engine_args='{{\"tensor_parallel_size\": 2}}'"]))
    assert ray_engine.placement(tp, 8) == {"actors": True, "workers": 1, "num_cpus": 1.0, "num_gpus": 2.0}
    hf = GenerateStage(GenerateConfig(teacher=[f"hf:{tiny}"], device="cpu"))
    assert ray_engine.placement(hf, 8) == {"actors": True, "workers": 1, "num_cpus": 1.0}  # no GPU asked


def test_one_engine_per_gpu_and_per_tensor_parallel_group(ray_engine, tmp_path):
    src = _files(tmp_path, _ids(20, 6))
    for stage_cls, actors in ((GpuProbeStage, 2), (TensorParallelProbeStage, 1)):
        log = tmp_path / f"{stage_cls.name}.log"
        stage = stage_cls(GpuProbeConfig(setups_log=str(log)))
        out = tmp_path / f"01-{stage_cls.name}"
        m = run_stage(stage, input_dir=src, out_dir=out, executor=ray_engine, progress=False)
        assert m.rows_out == 120 and m.workers == actors
        setups = [line.split(" ") for line in log.read_text().splitlines()]
        assert len(setups) == actors  # each engine set up once, for all of its units
        granted = [gpus for _pid, gpus, _visible in setups]
        if actors == 2:
            assert sorted(granted) == ["0", "1"]  # a GPU each, never shared
        else:
            assert granted == ["0,1"]  # the whole group to one engine
        assert all(visible == gpus for _pid, gpus, visible in setups)  # CUDA sees only its own
        frame = pl.read_parquet(out / "part-*.parquet")
        assert set(frame["probe__gpus"].unique().to_list()) == set(granted)


# -- the real stages on the actor path ---------------------------------------------------------------
def _traces(n: int, offset: int) -> pa.Table:
    reasoning = [f"Let x be {i}. First, compute the product {i}. " * (1 + i % 3) for i in range(offset, offset + n)]
    return pa.table({"trace_id": [f"t{i:03d}" for i in range(offset, offset + n)],
                     "problem_id": [f"p{i % 4}" for i in range(offset, offset + n)],
                     "prompt": [f"What is {i} + {i}?" for i in range(offset, offset + n)], "reasoning": reasoning,
                     "answer": [f"The answer is \\boxed{{{i}}}." for i in range(offset, offset + n)]})


def _killed_run(ray_engine, stage, src: Path, out: Path, tmp_path: Path):
    manifest = run_stage(stage, input_dir=src, out_dir=out, executor=ray_engine, progress=False)
    killed = (tmp_path / "killed").read_text()
    setups = (tmp_path / "setups.log").read_text().split()
    assert killed in setups and 3 <= len(setups) <= 4  # 2 engines + the restart (at most a spare)
    return manifest


def test_logit_cache_actors_split_units_and_resume_a_killed_unit(ray_engine, tiny, tmp_path):
    from curate.testing_ray_models import CpuCacheConfig, CpuCacheLogitsStage
    from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage

    src = _files(tmp_path, [_traces(6, 10 * i) for i in range(4)])
    options = {"teacher": str(tiny), "k": 4, "dtype": "float32", "device": "cpu"}
    stage = CpuCacheLogitsStage(CpuCacheConfig(**options, kill_marker=str(tmp_path / "killed"), kill_unit=1,
                                               setups_log=str(tmp_path / "setups.log")))
    m = _killed_run(ray_engine, stage, src, tmp_path / "02-cache_logits", tmp_path)
    # The killed unit's first batch (3 rows) came back from its scratch, not from the model.
    assert m.counts["batches_resumed"] == 1 and m.rows_out == 24 and m.workers == 2

    class Reference(CacheLogitsStage):
        batch_rows = 3  # the stand-in's batches, so every forward pass sees the same rows

    run_stage(Reference(CacheLogitsConfig(**options)), input_dir=src, out_dir=tmp_path / "local",
              executor=InProcessExecutor(), progress=False)
    got = pl.read_parquet(tmp_path / "02-cache_logits" / "part-*.parquet").sort("trace_id")
    want = pl.read_parquet(tmp_path / "local" / "part-*.parquet").sort("trace_id")
    assert got["trace_id"].to_list() == want["trace_id"].to_list()
    assert got.drop("topk_logprobs", "token_logprob").equals(want.drop("topk_logprobs", "token_logprob"))
    for column in ("topk_logprobs", "token_logprob"):  # threads per process differ: float rounding
        a, b = got[column].explode(), want[column].explode()
        if a.dtype.is_nested():
            a, b = a.explode(), b.explode()
        assert (a.cast(pl.Float64) - b.cast(pl.Float64)).abs().max() < 2e-3


def test_generation_engines_split_units_and_resume_a_killed_unit_from_its_log(ray_engine, tiny, tmp_path):
    from curate.generators.generate import GenerateConfig, GenerateStage
    from curate.schemas import PROBLEMS_SCHEMA, problem_ids
    from curate.testing_ray_models import CpuGenerateConfig, CpuGenerateStage

    def problems(offset: int) -> pa.Table:
        prompts = [f"Compute {i} + {2 * i}." for i in range(offset, offset + 4)]
        return pa.table({"problem_id": problem_ids(pa.array(prompts)), "source": ["u"] * 4, "domain": ["math"] * 4,
                         "prompt": prompts, "reference_answer": ["1"] * 4, "tests": [None] * 4,
                         "metadata": [None] * 4, "license": [None] * 4}, schema=PROBLEMS_SCHEMA)

    src = _files(tmp_path, [problems(10 * i) for i in range(4)])
    options = {"teacher": [f"hf:{tiny} temperature=0 n=2"], "max_tokens": 6, "device": "cpu", "progress": False,
               "batch_problems": 2}
    stage = CpuGenerateStage(CpuGenerateConfig(**options, kill_marker=str(tmp_path / "killed"), kill_unit=2,
                                               setups_log=str(tmp_path / "setups.log")))
    m = _killed_run(ray_engine, stage, src, tmp_path / "02-generate", tmp_path)
    # The killed unit's first batch (2 problems x 2 samples) came from its log, not the engine.
    assert m.counts["requests_resumed"] == 4 and m.counts["requests"] == 32 - 4
    assert m.rows_out == 32 and m.workers == 2
    run_stage(GenerateStage(GenerateConfig(**options)), input_dir=src, out_dir=tmp_path / "local",
              executor=InProcessExecutor(), progress=False)
    columns = ["trace_id", "problem_id", "teacher", "sample_index", "completion_ids", "finish_reason", "reasoning",
               "answer"]
    got = pl.read_parquet(tmp_path / "02-generate" / "part-*.parquet")
    want = pl.read_parquet(tmp_path / "local" / "part-*.parquet")
    columns = [c for c in columns if c in want.columns]
    assert len(columns) >= 5
    assert got.select(columns).sort("trace_id").equals(want.select(columns).sort("trace_id"))
    assert got["trace_id"].n_unique() == 32
