"""Select through the runner: curated shards, negatives side output, funnel in the manifest,
re-selecting with a changed threshold, and the error before any work."""

import json

import polars as pl
import pytest

from curate.executors import make_executor
from curate.filters.policy import PolicyError
from curate.filters.select import SelectConfig, SelectStage
from curate.runner import run_stage
from tests.test_select_policy import scored


def run(stage, source, out):
    return run_stage(stage, out_dir=out, input_dir=source, executor=make_executor("inprocess"), progress=False)


def test_select_step_writes_curated_negatives_and_funnel(tmp_path):
    source = tmp_path / "scored"
    source.mkdir()
    pl.from_arrow(scored()).write_parquet(source / "part-00000.parquet")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - verified\n  - {where: {column: completion_tokens, max: 650}}\n"
                      "negatives: {max_per_problem: 1}\n")
    manifest = run(SelectStage(SelectConfig(policy=str(policy))), source, tmp_path / "sel")
    curated = pl.read_parquet(tmp_path / "sel" / "part-*.parquet")
    assert sorted(curated["trace_id"]) == ["t1", "t11", "t2", "t3", "t4"]
    assert "select__dropped_by" not in curated.columns
    negatives = pl.read_parquet(tmp_path / "sel" / "negatives" / "part-*.parquet").sort("trace_id")
    assert negatives.select("trace_id", "select__positive_trace_id").rows() == [("t14", "t11"), ("t5", "t4")]
    assert manifest.summary["funnel"] == [
        {"rule": "input", "rows_left": 14}, {"rule": "verified", "dropped": 7, "rows_left": 7},
        {"rule": "where:completion_tokens", "dropped": 2, "rows_left": 5}]
    assert manifest.rows_out == 5 and manifest.side_outputs == {"negatives": 2}
    # a changed threshold re-selects (the policy's content is in the fingerprint)
    policy.write_text("rules:\n  - verified\n  - {where: {column: completion_tokens, max: 150}}\n")
    again = run(SelectStage(SelectConfig(policy=str(policy))), source, tmp_path / "sel")
    assert again.rows_out == 1 and json.loads((tmp_path / "sel" / "_manifest.json").read_text())["rows_out"] == 1


def test_missing_column_fails_before_any_shard_is_written(tmp_path):
    source = tmp_path / "scored"
    source.mkdir()
    pl.from_arrow(scored()).drop("format__ok").write_parquet(source / "part-00000.parquet")
    stage = SelectStage(SelectConfig(policy={"rules": ["verified", "format_ok"]}))
    with pytest.raises(PolicyError, match="rule format_ok needs column format__ok"):
        run(stage, source, tmp_path / "sel")
    assert not list((tmp_path / "sel").glob("part-*.parquet"))
