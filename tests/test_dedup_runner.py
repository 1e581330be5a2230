"""The dedup stages through the real runner: fit in the runner process, process in workers."""

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.executors import LocalExecutor
from curate.filters.exact import ExactDedupStage
from curate.filters.minhash import MinHashConfig, MinHashDedupStage
from curate.runner import run_stage

TEXT = "first we factor the quadratic then we check both roots in the original equation carefully"


def test_exact_then_minhash_through_the_runner(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rows = 40
    table = pa.table({
        "trace_id": [f"t{i:02d}" for i in range(rows)], "problem_id": [f"p{i // 4}" for i in range(rows)],
        "teacher": ["A", "B"] * (rows // 2), "prompt": [f"Problem {i // 4}" for i in range(rows)],
        # every 10th trace repeats TEXT; t01 is TEXT with one word changed; the rest are unique
        "reasoning": [TEXT if i % 10 == 0 else TEXT.replace("carefully", "again") if i == 1 else f"unique {i} " * 8
                      for i in range(rows)],
        "answer": ["4"] * rows,
    })
    pq.write_table(table.slice(0, 20), src / "a.parquet")
    pq.write_table(table.slice(20), src / "b.parquet")

    exact = run_stage(ExactDedupStage(), input_dir=src, out_dir=tmp_path / "exact", executor=LocalExecutor(2),
                      progress=False)
    assert exact.rows_in == exact.rows_out == rows
    out = pl.read_parquet(tmp_path / "exact" / "part-*.parquet").sort("trace_id")
    assert out.filter(pl.col("exact__trace_group") == "t00")["trace_id"].to_list() == ["t00", "t10", "t20", "t30"]

    manifest = run_stage(MinHashDedupStage(MinHashConfig(threshold=0.7)), input_dir=tmp_path / "exact",
                         out_dir=tmp_path / "minhash", executor=LocalExecutor(2), progress=False)
    out = pl.read_parquet(tmp_path / "minhash" / "part-*.parquet").sort("trace_id")
    assert out.height == rows
    cluster = out.filter(pl.col("minhash__cluster_size") > 1)
    assert cluster["trace_id"].to_list() == ["t00", "t01", "t10", "t20", "t30"]
    assert cluster["minhash__cluster_id"].unique().to_list() == ["t01"]  # "again" is shorter than "carefully"
    assert out["minhash__is_survivor"].sum() == rows - 4
    assert manifest.summary["algorithm"].startswith("curate-minhash/3")
    assert manifest.summary["bands"] == 20 and manifest.summary["rows"] == 6
