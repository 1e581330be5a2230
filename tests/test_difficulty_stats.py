"""Difficulty: pass rates, buckets and per-teacher statistics from whichever verdict columns exist."""

import polars as pl
import pyarrow as pa
import pytest

from curate.filters.difficulty import DifficultyConfig, DifficultyStage, teacher_stats
from curate.testing import run_stage_in_memory


def traces(**extra) -> pa.Table:
    # p1: all 3 correct (trivial); p2: 1 of 3 (medium at 1/3); p3: no reference (unknown);
    # p4: 0 of 2 (unsolved); p5: 1 of 5 (hard); p6: 3 of 4 (easy)
    verdicts = {"p1": ["correct"] * 3, "p2": ["correct", "incorrect", "incorrect"], "p3": ["no_reference"],
                "p4": ["incorrect", "incorrect"], "p5": ["correct"] + ["incorrect"] * 4,
                "p6": ["correct", "correct", "correct", "incorrect"]}
    rows = [(f"{p}-{i}", p, "ABC"[i % 3], v) for p, vs in verdicts.items() for i, v in enumerate(vs)]
    return pa.table({"trace_id": [r[0] for r in rows], "problem_id": [r[1] for r in rows],
                     "teacher": [r[2] for r in rows], "math__verdict": [r[3] for r in rows], **extra})


def per_problem(table: pa.Table, config: DifficultyConfig | None = None) -> dict:
    out = pl.from_arrow(run_stage_in_memory(DifficultyStage(config), table, batch_rows=4).table)
    return {r[0]: r[1:] for r in out.select("problem_id", "difficulty__pass_rate", "difficulty__checked",
                                            "difficulty__teachers", "difficulty__solved_by",
                                            "difficulty__bucket").unique("problem_id").rows()}


def test_pass_rates_counts_and_buckets():
    got = per_problem(traces())
    assert got == {
        "p1": (1.0, 3, 3, 3, "trivial"), "p2": (1 / 3, 3, 3, 1, "medium"), "p3": (None, 0, 0, 0, "unknown"),
        "p4": (0.0, 2, 2, 0, "unsolved"), "p5": (0.2, 5, 3, 1, "hard"), "p6": (0.75, 4, 3, 3, "easy")}


def test_thresholds_move_buckets():
    got = per_problem(traces(), DifficultyConfig(hard_below=0.4, easy_from=0.8))
    assert {p: v[-1] for p, v in got.items()} == {"p1": "trivial", "p2": "hard", "p3": "unknown", "p4": "unsolved",
                                                  "p5": "hard", "p6": "medium"}
    with pytest.raises(ValueError, match="hard_below"):
        DifficultyConfig(hard_below=0.9, easy_from=0.5)


def test_code_verdicts_count_and_missing_columns_mean_unknown():
    table = traces().rename_columns(["trace_id", "problem_id", "teacher", "code__verdict"])
    table = table.set_column(3, "code__verdict", pa.array(
        ["pass" if v == "correct" else "fail" for v in table.column("code__verdict").to_pylist()]))
    assert per_problem(table)["p2"] == (1 / 3, 3, 3, 1, "medium")
    bare = traces().drop(["math__verdict"])
    assert set(v[-1] for v in per_problem(bare).values()) == {"unknown"}


def test_teacher_statistics_table_and_summary(tmp_path):
    n = traces().num_rows
    table = traces(completion_tokens=pa.array([100 * (i + 1) for i in range(n)], pa.int64()),
                   finish_reason=["length" if i % 4 == 0 else "stop" for i in range(n)])
    stats = pl.from_arrow(teacher_stats(table))
    a = stats.filter(pl.col("teacher") == "A").row(0, named=True)
    a_rows = [i for i, t in enumerate(table.column("teacher").to_pylist()) if t == "A"]
    verdicts = traces().column("math__verdict").to_pylist()
    checked = [i for i in a_rows if verdicts[i] != "no_reference"]
    assert a["traces"] == len(a_rows) and a["checked"] == len(checked)
    assert a["pass_rate"] == sum(verdicts[i] == "correct" for i in checked) / len(checked)
    assert a["tokens_p50"] == pytest.approx(float(pl.Series([100 * (i + 1) for i in a_rows]).median()))
    assert a["truncated_share"] == sum(i % 4 == 0 for i in a_rows) / len(a_rows)
    stage = DifficultyStage()
    out = run_stage_in_memory(stage, table)
    summary = stage.summarize(out.counts)
    assert summary["trace_buckets"] == {"unknown": 1, "unsolved": 2, "hard": 5, "medium": 3, "easy": 4, "trivial": 3}
    assert [t["teacher"] for t in summary["teachers"]] == ["A", "B", "C"]
    pl.from_arrow(out.table).write_parquet(tmp_path / "part-00000.parquet")
    assert teacher_stats(tmp_path).equals(teacher_stats(table))
