"""The dedup stages through the real runner: fit in the runner process, process in workers."""

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.executors import LocalExecutor
from curate.filters.exact import ExactDedupStage
from curate.filters.minhash import MinHashConfig, MinHashDedupStage
from curate.runner import run_stage

TEXT = "first we factor the quadratic then we check both roots in the original equation carefully"


def _two_files(src, rows=40):
    src.mkdir()
    table = pa.table({
        "trace_id": [f"t{i:02d}" for i in range(rows)], "problem_id": [f"p{i // 4}" for i in range(rows)],
        "teacher": ["A", "B"] * (rows // 2), "prompt": [f"Problem {i // 4}" for i in range(rows)],
        # every 10th trace repeats TEXT; t01 is TEXT with one word changed; the rest are unique
        "reasoning": [TEXT if i % 10 == 0 else TEXT.replace("carefully", "again") if i == 1 else f"unique {i} " * 8
                      for i in range(rows)],
        "answer": ["4"] * rows,
    })
    pq.write_table(table.slice(0, rows // 2), src / "a.parquet")
    pq.write_table(table.slice(rows // 2), src / "b.parquet")


def test_exact_then_minhash_through_the_runner(tmp_path):
    src = tmp_path / "in"
    rows = 40
    _two_files(src, rows)

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
    assert manifest.summary["algorithm"].startswith("curate-minhash/4")
    assert manifest.summary["bands"] == 20 and manifest.summary["rows"] == 6


def test_minhash_fit_in_worker_processes_matches_the_fit_in_threads(tmp_path, monkeypatch):
    import curate.filters.minhash as minhash

    gathered = []
    real = minhash._spilled_sets
    monkeypatch.setattr(minhash, "_spilled_sets", lambda *a: gathered.append(a[0]) or real(*a))
    # processes=2: each file's signatures in a worker, shingles spilled to scratch and gathered for
    # the exact Jaccard check; the duplicates straddle the two files
    _two_files(tmp_path / "in")
    states = {}
    for processes in (1, 2):
        gathered.clear()
        scratch = tmp_path / f"scratch{processes}"
        scratch.mkdir()
        stage = MinHashDedupStage(MinHashConfig(threshold=0.7, processes=processes, scratch_dir=str(scratch)))
        manifest = run_stage(stage, input_dir=tmp_path / "in", out_dir=tmp_path / f"mh{processes}",
                             executor=LocalExecutor(1), progress=False)
        assert manifest.rows_out == 40
        assert len(gathered) == (2 if processes == 2 else 0)  # both files' spills were read
        states[processes] = pl.read_parquet(tmp_path / f"mh{processes}" / "_state.parquet")
        assert list(scratch.iterdir()) == []  # the spill is removed when the fit ends
    assert states[2].equals(states[1])
    dup = states[2].filter(pl.col("minhash__cluster_size") > 1)
    assert dup["trace_id"].to_list() == ["t00", "t01", "t10", "t20", "t30"]
    assert dup["minhash__max_jaccard"].to_list()[0] == 1.0
