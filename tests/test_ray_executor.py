"""The Ray engine on a real local Ray cluster (2 CPUs): the same outputs as the local engine for
every step of the demo, and no row lost or duplicated when a worker is killed mid-unit."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

ray = pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from curate.cli import app  # noqa: E402
from curate.demo import demo_pipeline_path  # noqa: E402
from curate.executors import make_executor  # noqa: E402
from curate.io import part_files  # noqa: E402
from curate.manifest import Manifest  # noqa: E402
from curate.pipeline import load_pipeline, run_pipeline  # noqa: E402
from curate.ray_executor import FIT_STATS, uses_actors  # noqa: E402
from curate.runner import run_stage  # noqa: E402
from curate.testing_ray import KillOnceConfig, KillOnceModelStage, KillOnceStage  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def demo_runs(ray_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    pipeline = load_pipeline(demo_pipeline_path())
    # The local reference: `--engine local --workers 1` (units in this process; the pool with
    # more workers runs the same execute_unit per unit).
    local = run_pipeline(pipeline, root / "local", executor=make_executor("local", workers=1), progress=False)
    # `curate run --engine ray` as a user types it; in this process, so it joins the session's
    # cluster (RayExecutor reuses an initialised Ray) instead of starting a second one.
    result = CliRunner().invoke(app, ["run", str(demo_pipeline_path()), "--out", str(root / "ray"),
                                      "--engine", "ray", "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    steps = [s["dir"] for s in json.loads((root / "ray" / "_run.json").read_text())["steps"]]
    on_ray = [Manifest.load(root / "ray" / step) for step in steps]
    return root / "local", root / "ray", local, on_ray


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    ids = [c for c in ("trace_id", "problem_id") if c in frame.columns]
    rest = [c for c, dtype in frame.schema.items() if c not in ids and not dtype.is_nested() and dtype != pl.Null]
    return frame.sort(ids + rest, nulls_last=True)


def _tables(step_dir: Path) -> dict[str, pl.DataFrame]:
    """Every Parquet output of a step: main shards, each side output, the fit state, rejects."""
    out = {"main": pl.from_arrow(pa.concat_tables([pq.read_table(p) for p in part_files(step_dir)]))}
    for side in sorted(p for p in step_dir.iterdir() if p.is_dir() and part_files(p)):
        out[side.name] = pl.from_arrow(pa.concat_tables([pq.read_table(p) for p in part_files(side)]))
    for name in ("_state.parquet", "_rejects.parquet"):
        if (step_dir / name).exists():
            out[name] = pl.read_parquet(step_dir / name)
    return out


def test_demo_on_ray_equals_the_local_engine_row_for_row_in_every_step(demo_runs):
    local_dir, ray_dir, local, on_ray = demo_runs
    steps = [s["dir"] for s in json.loads((local_dir / "_run.json").read_text())["steps"]]
    assert len(steps) >= 9 and [m.step for m in on_ray] == steps
    for step in steps:
        here, there = _tables(local_dir / step), _tables(ray_dir / step)
        assert sorted(here) == sorted(there), step
        for name, frame in here.items():
            assert frame.height == there[name].height, (step, name)
            assert_frame_equal(_sorted(frame), _sorted(there[name].select(frame.columns)), check_row_order=True)
            assert there[name].columns == frame.columns, (step, name)
    for mine, theirs in zip(local, on_ray, strict=True):
        assert theirs.executor == "ray" and mine.executor == "local"
        for field in ("rows_in", "rows_out", "rows_rejected", "counts", "side_outputs", "parts",
                      "output_fingerprint", "fingerprint"):
            assert getattr(mine, field) == getattr(theirs, field), (mine.step, field)
    assert on_ray[0].rows_out == 1080 and on_ray[-1].rows_out < 1080  # import keeps all, select drops


def test_demo_on_ray_fits_minhash_as_partitioned_waves_not_on_the_driver(demo_runs):
    local_dir, ray_dir, local, on_ray = demo_runs
    (step,) = [m.step for m in on_ray if m.stage == "dedup_minhash"]
    assert not (local_dir / step / FIT_STATS).exists()  # the local engine fits in the driver
    stats = json.loads((ray_dir / step / FIT_STATS).read_text())
    assert stats["rows"] == 1080 and stats["partitions"] >= 4
    waves = stats["waves"]
    assert waves["signatures"]["tasks"] == on_ray[0].parts  # one task per unit of the input
    assert waves["buckets"]["tasks"] == stats["partitions"]
    assert stats["peak_rss_per_task"] > 0 and not (ray_dir / step / "_fit").exists()
    # The demo has near-duplicates, and the summary the manifest shows is the local fit's.
    mine = next(m for m in local if m.step == step)
    theirs = next(m for m in on_ray if m.step == step)
    timeless = {k: v for k, v in mine.summary.items() if k != "fit_seconds"}
    assert {k: v for k, v in theirs.summary.items() if k != "fit_seconds"} == timeless
    assert set(theirs.summary["fit_seconds"]) == set(mine.summary["fit_seconds"]) and timeless["linked_pairs"] > 0


def test_demo_on_ray_embeds_and_searches_semantic_units_as_waves(demo_runs):
    local_dir, ray_dir, local, on_ray = demo_runs
    (step,) = [m.step for m in on_ray if m.stage == "dedup_semantic"]
    stats = json.loads((ray_dir / step / FIT_STATS).read_text())
    assert stats["units"] == 70  # one per problem (field: prompt), embedded once, by one slice
    assert stats["waves"]["embed"]["tasks"] == on_ray[0].parts and "exact" in stats["waves"]
    mine = next(m for m in local if m.step == step)
    theirs = next(m for m in on_ray if m.step == step)
    assert theirs.summary == mine.summary and mine.summary["units"] == 70


def test_demo_on_ray_is_skipped_when_run_again(demo_runs, ray_engine):
    _, ray_dir, _, on_ray = demo_runs
    again = run_pipeline(load_pipeline(demo_pipeline_path()), ray_dir, executor=ray_engine, progress=False)
    assert [m.started_at for m in again] == [m.started_at for m in on_ray]


def _input(tmp_path: Path, files: int, rows: int) -> tuple[Path, list[str]]:
    src = tmp_path / "in"
    src.mkdir()
    ids = []
    for i in range(files):  # one file per unit
        chunk = [f"f{i}-{j:04d}" for j in range(rows)]
        pq.write_table(pa.table({"trace_id": chunk}), src / f"part-{i:05d}.parquet")
        ids += chunk
    return src, ids


def _check_exact(out: Path, ids: list[str]) -> pl.DataFrame:
    frame = pl.read_parquet(out / "part-*.parquet")
    assert frame.height == len(ids)
    assert sorted(frame["trace_id"].to_list()) == sorted(ids)  # nothing lost, nothing twice
    return frame


def test_killed_task_worker_mid_unit_loses_and_duplicates_nothing(ray_engine, tmp_path):
    src, ids = _input(tmp_path, files=4, rows=120)
    marker = tmp_path / "killed"
    stage = KillOnceStage(KillOnceConfig(marker=str(marker), kill_unit=1))
    assert not uses_actors(stage)
    out = tmp_path / "01-kill"
    m = run_stage(stage, input_dir=src, out_dir=out, executor=ray_engine, progress=False)
    killed_pid = int(marker.read_text())
    # The killed attempt had written one batch into its temp shard; it never became a part.
    assert (out / f".part-00001.parquet.{killed_pid}.tmp").exists()
    frame = _check_exact(out, ids)
    assert (m.rows_in, m.rows_out, m.parts) == (480, 480, 4)
    unit1 = pq.read_table(out / "part-00001.parquet").column("kill__worker_pid").to_pylist()
    assert len(unit1) == 120 and killed_pid not in unit1  # the retry wrote the whole unit
    assert frame["kill__worker_pid"].null_count() == 0


def test_killed_actor_is_restarted_and_setup_runs_once_per_actor(ray_engine, tmp_path):
    src, ids = _input(tmp_path, files=8, rows=60)
    marker, setups = tmp_path / "killed", tmp_path / "setups.log"
    stage = KillOnceModelStage(KillOnceConfig(marker=str(marker), kill_unit=2, setups_log=str(setups)))
    assert uses_actors(stage)
    out = tmp_path / "01-kill-actor"
    m = run_stage(stage, input_dir=src, out_dir=out, executor=ray_engine, progress=False)
    frame = _check_exact(out, ids)
    assert m.rows_out == 480 and m.parts == 8 and m.executor == "ray"
    setup_pids = setups.read_text().split()
    killed_pid = marker.read_text()
    assert killed_pid in setup_pids  # the killed process was an actor that had run setup()
    # 2 actors + 1 restart set up (at most a spare more), never once per unit.
    assert 3 <= len(setup_pids) < 8
    # The killed actor may have committed earlier units; the unit it died in was redone whole
    # by another actor.
    assert set(map(str, frame["kill__worker_pid"].unique().to_list())) <= set(setup_pids)
    unit2 = pq.read_table(out / "part-00002.parquet").column("kill__worker_pid").to_pylist()
    assert len(unit2) == 60 and int(killed_pid) not in unit2


def test_failed_stage_resumes_on_ray_from_committed_shards(ray_engine, tmp_path):
    src, ids = _input(tmp_path, files=6, rows=60)
    marker = tmp_path / "failed"
    out = tmp_path / "01-fail"
    stage = KillOnceStage(KillOnceConfig(marker=str(marker), kill_unit=3, action="raise"))
    with pytest.raises(Exception, match="unit 3 failed on purpose"):
        run_stage(stage, input_dir=src, out_dir=out, executor=ray_engine, progress=False)
    assert not (out / "_manifest.json").exists() and not (out / "part-00003.parquet").exists()
    committed = len(part_files(out))
    again = run_stage(KillOnceStage(KillOnceConfig(marker=str(marker), kill_unit=3, action="raise")),
                      input_dir=src, out_dir=out, executor=ray_engine, progress=False)
    assert again.units_resumed == committed and again.rows_out == 360
    _check_exact(out, ids)


def test_gpu_stage_on_a_cluster_without_gpus_fails_clearly(ray_engine):
    from curate.stage import Resources

    class NeedsGpu(KillOnceStage):
        name = "needs_gpu"
        resources = Resources(cpus=1, gpus=4, stateful=True)

    stage = NeedsGpu(KillOnceConfig(marker="/nonexistent"))
    with pytest.raises(RuntimeError, match=r"needs 4 GPU\(s\) per worker; the Ray cluster \(local\) has 2"):
        ray_engine.workers_for(stage, 4)
