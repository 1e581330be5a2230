import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curate.filters.exact import ExactDedupStage
from curate.filters.minhash import MinHashConfig, MinHashDedupStage, candidate_edges, lsh_params
from curate.testing import run_stage_in_memory

BASE = ("we first compute the sum of the roots using vieta formulas then we substitute the values "
        "into the expression and simplify carefully to obtain the final result which is twelve")


def _traces(rows):
    return pa.table({
        "trace_id": [r[0] for r in rows], "problem_id": [r[1] for r in rows], "teacher": [r[2] for r in rows],
        "prompt": [r[3] for r in rows], "reasoning": [r[4] for r in rows], "answer": [r[5] for r in rows],
    })


def test_exact_dedup_groups_normalised_text_and_marks_one_first():
    table = _traces([
        ("t3", "p1", "A", "Find $x$.", "Think.", "\\boxed{2}"),
        ("t1", "p1", "B", "Find $x$.", "think.", "\\boxed{2}"),   # same after lower-casing
        ("t2", "p2", "A", "find  $x$ .", "Other.", "\\boxed{3}"),  # problem text equal after normalising
    ])
    out = run_stage_in_memory(ExactDedupStage(), table)
    got = out.table.select(["trace_id", "exact__problem_group", "exact__trace_group", "exact__is_first"]).to_pylist()
    assert got == [
        {"trace_id": "t3", "exact__problem_group": "p1", "exact__trace_group": "t1", "exact__is_first": False},
        {"trace_id": "t1", "exact__problem_group": "p1", "exact__trace_group": "t1", "exact__is_first": True},
        {"trace_id": "t2", "exact__problem_group": "p1", "exact__trace_group": "t2", "exact__is_first": True},
    ]
    assert out.counts["duplicate_traces"] == 1


def test_lsh_params_match_datasketch_and_star_edges():
    datasketch_lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.5, 0.7, 0.8, 0.9):
        assert lsh_params(threshold, 128) == datasketch_lsh._optimal_param(threshold, 128, 0.5, 0.5)
    keys = np.array([[1, 7], [1, 8], [2, 8], [1, 9]], dtype=np.uint64)
    edges = candidate_edges(keys).sort("src", "dst").rows()
    assert edges == [(0, 1), (0, 3), (1, 2)]  # band 0 bucket {0,1,3} -> star from 0; band 1 {1,2}


def test_minhash_clusters_near_duplicates_and_prefers_verified_then_shorter():
    words = BASE.split()
    near = " ".join(words[:-1] + ["twelve."])        # one word changed at the end
    other = "a completely different argument about triangles and circles " * 3
    table = _traces([
        ("a", "p", "T1", "q", BASE, "12"),
        ("b", "p", "T2", "q", near, "12"),
        ("c", "p", "T3", "q", other, "5"),
        ("d", "p", "T4", "q", BASE + " and we double check it", "12"),
    ]).append_column("math__verdict", pa.array(["incorrect", "correct", "correct", "correct"]))
    out = run_stage_in_memory(MinHashDedupStage(MinHashConfig(threshold=0.7)), table).table
    frame = pl.from_arrow(out).select("trace_id", "minhash__cluster_id", "minhash__cluster_size", "minhash__is_survivor")
    assert frame.rows() == [("a", "b", 3, False), ("b", "b", 3, True), ("c", "c", 1, True), ("d", "b", 3, False)]


def test_exact_jaccard_check_rejects_lsh_false_positives():
    # With 2 bands of 1 row, almost everything collides; the exact check must keep them apart.
    table = _traces([("a", "p", "T", "q", BASE, ""), ("b", "p", "T", "q", "entirely other words here now", "")])
    cfg = MinHashConfig(threshold=0.9, num_perm=2)
    out = run_stage_in_memory(MinHashDedupStage(cfg), table).table
    assert out.column("minhash__cluster_size").to_pylist() == [1, 1]
