import json

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.builtin import PassthroughStage
from curate.executors import InProcessExecutor, LocalExecutor
from curate.io import part_files
from curate.manifest import Manifest
from curate.runner import StageInputError, run_stage
from curate.testing import GroupSizeConfig, GroupSizeStage, SlowCopyConfig, SlowCopyStage


def _input(tmp_path, n=1000, row_group=100):
    src = tmp_path / "in"
    src.mkdir()
    table = pa.table({"trace_id": [f"t{i:05d}" for i in range(n)], "problem_id": [f"p{i % 7}" for i in range(n)]})
    pq.write_table(table, src / "part-00000.parquet", row_group_size=row_group)
    return src, table


def test_passthrough_through_the_process_pool_keeps_every_row(tmp_path):
    src, table = _input(tmp_path)
    m = run_stage(PassthroughStage(), input_dir=src, out_dir=tmp_path / "01-pass", executor=LocalExecutor(2),
                  progress=False)
    out = pl.read_parquet(tmp_path / "01-pass" / "part-*.parquet").sort("trace_id")
    assert out["trace_id"].to_list() == table.column("trace_id").to_pylist()
    assert (m.rows_in, m.rows_out, m.rows_rejected, m.stage, m.status) == (1000, 1000, 0, "passthrough", "complete")
    on_disk = json.loads((tmp_path / "01-pass" / "_manifest.json").read_text())
    for key in ("config", "config_hash", "input", "package_version", "wall_s", "counts", "fingerprint"):
        assert key in on_disk


def test_unchanged_stage_is_skipped_and_changed_config_reruns(tmp_path):
    src, _ = _input(tmp_path, n=200)
    out = tmp_path / "01-slow"
    first = run_stage(SlowCopyStage(SlowCopyConfig(seconds_per_batch=0)), input_dir=src, out_dir=out, progress=False)
    again = run_stage(SlowCopyStage(SlowCopyConfig(seconds_per_batch=0)), input_dir=src, out_dir=out, progress=False)
    assert again.started_at == first.started_at  # skipped: the manifest was not rewritten
    changed = run_stage(SlowCopyStage(SlowCopyConfig(seconds_per_batch=0.001)), input_dir=src, out_dir=out,
                        progress=False)
    assert changed.config_hash != first.config_hash
    assert changed.fingerprint != first.fingerprint
    assert pl.read_parquet(out / "part-*.parquet")["slow__row_len"].to_list() == [6] * 200


def test_resume_runs_only_unfinished_units_without_duplicates(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):  # four input files -> four units
        pq.write_table(pa.table({"trace_id": [f"f{i}-{j}" for j in range(50)]}), src / f"part-{i:05d}.parquet")
    out = tmp_path / "01-pass"
    calls = {"n": 0}
    original = PassthroughStage.process

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(self, batch)

    monkeypatch.setattr(PassthroughStage, "process", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(PassthroughStage(), input_dir=src, out_dir=out, executor=InProcessExecutor(), progress=False)
    assert len(part_files(out)) == 2 and not (out / "_manifest.json").exists()
    monkeypatch.setattr(PassthroughStage, "process", original)
    m = run_stage(PassthroughStage(), input_dir=src, out_dir=out, executor=InProcessExecutor(), progress=False)
    assert m.units_resumed == 2
    ids = pl.read_parquet(out / "part-*.parquet")["trace_id"]
    assert ids.len() == 200 and ids.n_unique() == 200


def test_global_stage_fits_on_declared_columns_then_joins(tmp_path):
    src, _ = _input(tmp_path, n=70)
    m = run_stage(GroupSizeStage(GroupSizeConfig()), input_dir=src, out_dir=tmp_path / "01-g", progress=False,
                  executor=LocalExecutor(2))
    out = pl.read_parquet(tmp_path / "01-g" / "part-*.parquet")
    assert out["group__size"].to_list() == [10] * 70
    assert (tmp_path / "01-g" / "_state.parquet").exists()
    assert m.counts["groups_seen"] == 7


def test_missing_required_column_is_a_clear_error_naming_file_and_column(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": [1]}), src / "part-00000.parquet")
    with pytest.raises(StageInputError, match=r"lacks column\(s\) trace_id"):
        run_stage(SlowCopyStage(), input_dir=src, out_dir=tmp_path / "out", progress=False)


def test_outputs_are_readable_by_polars_duckdb_pyarrow_and_datasets(tmp_path):
    import datasets

    src, _ = _input(tmp_path, n=300)
    run_stage(PassthroughStage(), input_dir=src, out_dir=tmp_path / "01-pass", progress=False)
    glob = str(tmp_path / "01-pass" / "part-*.parquet")
    assert pl.read_parquet(glob).height == 300
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == 300
    assert pq.ParquetDataset(str(tmp_path / "01-pass")).read().num_rows == 300
    assert len(datasets.load_dataset("parquet", data_files=glob, split="train")) == 300
    assert Manifest.load(tmp_path / "01-pass").rows_out == 300
