import polars as pl
import pyarrow as pa
import pytest

from curate.filters.difficulty import DifficultyStage
from curate.filters.select import PolicyError, SelectConfig, SelectStage
from curate.testing import run_stage_in_memory


def _scored():
    # problem p1: 3 teachers all correct (trivial); p2: 1 of 3 correct (hard); p3: no reference
    rows = [
        ("t1", "p1", "A", "correct", True, True, "x" * 30),
        ("t2", "p1", "B", "correct", True, True, "x" * 10),
        ("t3", "p1", "C", "correct", True, False, "x" * 20),
        ("t4", "p2", "A", "correct", True, True, "x" * 50),
        ("t5", "p2", "B", "incorrect", True, True, "x" * 5),
        ("t6", "p2", "C", "incorrect", False, True, "x" * 5),
        ("t7", "p3", "A", "no_reference", True, True, "x"),
    ]
    return pa.table({
        "trace_id": [r[0] for r in rows], "problem_id": [r[1] for r in rows], "teacher": [r[2] for r in rows],
        "math__verdict": [r[3] for r in rows], "format__ok": [r[4] for r in rows],
        "minhash__is_survivor": [r[5] for r in rows], "reasoning": [r[6] for r in rows],
        "answer": [""] * len(rows), "domain": ["math"] * len(rows),
    })


def test_difficulty_pass_rates_and_buckets():
    out = run_stage_in_memory(DifficultyStage(), _scored()).table
    got = pl.from_arrow(out).select("trace_id", "difficulty__pass_rate", "difficulty__solved_by",
                                    "difficulty__bucket").unique("trace_id", maintain_order=True)
    assert got.rows() == [
        ("t1", 1.0, 3, "trivial"), ("t2", 1.0, 3, "trivial"), ("t3", 1.0, 3, "trivial"),
        ("t4", 1 / 3, 1, "medium"), ("t5", 1 / 3, 1, "medium"), ("t6", 1 / 3, 1, "medium"),
        ("t7", None, 0, "unknown"),
    ]


def test_select_applies_rules_in_order_with_a_funnel_and_negatives():
    table = run_stage_in_memory(DifficultyStage(), _scored()).table
    stage = SelectStage(SelectConfig(policy={
        "require_verified": True, "require_format_ok": True, "drop_duplicates": ["minhash"],
        "max_per_problem": 1, "negatives": True}))
    out = run_stage_in_memory(stage, table)
    assert out.table.column("trace_id").to_pylist() == ["t2", "t4"]
    assert [f["rows_left"] for f in stage.summarize(out.counts)["funnel"]] == [7, 4, 4, 3, 2]
    assert out.counts["drop:require_verified"] == 3 and out.counts["drop:drop_duplicates:minhash"] == 1
    negatives = out.side_outputs if out.side_outputs else {}
    assert "select__positive_trace_id" not in out.table.column_names
    assert negatives == {}  # run_stage_in_memory keeps side outputs per batch; checked below


def test_negatives_pair_wrong_traces_with_a_kept_one():
    table = run_stage_in_memory(DifficultyStage(), _scored()).table
    stage = SelectStage(SelectConfig(policy={"require_verified": True, "negatives": True}))
    stage.load_state(stage.fit(table.to_batches()))
    result = stage.process(table)
    neg = pl.from_arrow(result.side_outputs["negatives"]).select("trace_id", "select__positive_trace_id").rows()
    assert neg == [("t5", "t4"), ("t6", "t4")]


def test_changing_a_threshold_reselects_and_drop_trivial():
    table = run_stage_in_memory(DifficultyStage(), _scored()).table
    out = run_stage_in_memory(SelectStage(SelectConfig(policy={"require_verified": True,
                                                               "drop_difficulty": ["trivial"]})), table)
    assert out.table.column("trace_id").to_pylist() == ["t4"]


def test_a_rule_needing_a_missing_column_fails_before_any_work():
    table = _scored().drop(["format__ok"])
    with pytest.raises(PolicyError, match="rule require_format_ok needs column format__ok"):
        run_stage_in_memory(SelectStage(SelectConfig(policy={"require_format_ok": True})), table)
    with pytest.raises(ValueError):
        SelectConfig(policy={"max_per_problm": 2})
