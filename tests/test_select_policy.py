"""Select: rules in order with exact expected rows, the funnel, negatives, errors before work."""

from collections import Counter

import polars as pl
import pyarrow as pa
import pytest

from curate.filters.difficulty import DifficultyStage
from curate.filters.policy import PolicyError, load_policy
from curate.filters.select import SelectConfig, SelectStage
from curate.testing import run_stage_in_memory

# trace, problem, teacher, verdict, format_ok, minhash survivor, tokens, decon benchmark
ROWS = [
    ("t1", "p1", "A", "correct", True, True, 300, None),
    ("t2", "p1", "B", "correct", True, True, 100, None),
    ("t3", "p1", "C", "correct", True, False, 200, None),
    ("t4", "p2", "A", "correct", True, True, 500, None),
    ("t5", "p2", "B", "incorrect", True, True, 50, None),
    ("t6", "p2", "C", "incorrect", False, True, 40, None),
    ("t7", "p3", "A", "no_reference", True, True, 10, None),
    ("t8", "p4", "A", "correct", True, True, 900, "aime24"),
    ("t9", "p4", "B", "incorrect", True, True, 800, "aime24"),
    ("t10", "p5", "A", "correct", True, True, 700, None),
    ("t11", "p5", "A", "correct", True, True, 600, None),
    ("t12", "p5", "B", "incorrect", True, True, 650, None),
    ("t13", "p5", "B", "incorrect", True, True, 640, None),
    ("t14", "p5", "B", "incorrect", True, True, 630, None),
]


def scored() -> pa.Table:
    cols = list(zip(*ROWS, strict=True))
    table = pa.table({
        "trace_id": cols[0], "problem_id": cols[1], "teacher": cols[2], "math__verdict": cols[3],
        "format__ok": cols[4], "minhash__is_survivor": cols[5], "completion_tokens": pa.array(cols[6], pa.int64()),
        "decon__benchmark": pa.array(cols[7], pa.string()), "domain": ["math"] * len(ROWS),
        "reasoning": ["r"] * len(ROWS), "answer": [""] * len(ROWS)})
    return run_stage_in_memory(DifficultyStage(), table).table


def select(policy: dict, table: pa.Table | None = None):
    stage = SelectStage(SelectConfig(policy=policy))
    table = table if table is not None else scored()
    stage.load_state(stage.fit(table.to_batches(max_chunksize=5)))
    results = [stage.process(table.slice(i, 5)) for i in range(0, table.num_rows, 5)]
    counts = sum((r.counts for r in results), Counter())
    kept = pa.concat_tables([r.table for r in results])
    negatives = [r.side_outputs["negatives"] for r in results if "negatives" in r.side_outputs]
    return stage, kept, counts, (pa.concat_tables(negatives) if negatives else None)


def ids(table: pa.Table) -> list[str]:
    return table.column("trace_id").to_pylist()


def test_each_rule_drops_exactly_its_rows_in_order():
    stage, kept, counts, _ = select({"rules": [
        "verified", "format_ok", "not_contaminated", {"survivors": ["minhash"]},
        {"drop_solved_by_all": {"min_teachers": 2}}, {"per_problem": {"max": 1}}]})
    # verified drops t5 t6 t7 t9 t12 t13 t14; not_contaminated t8 (problem p4); survivors t3;
    # p1 is solved by every teacher (A, B, C): t1 t2; per_problem keeps t11 (600) over t10 (700)
    assert ids(kept) == ["t4", "t11"]
    funnel = stage.summarize(counts)["funnel"]
    assert [(f["rule"], f["rows_left"]) for f in funnel] == [
        ("input", 14), ("verified", 7), ("format_ok", 7), ("not_contaminated", 6), ("survivors", 5),
        ("drop_solved_by_all", 3), ("per_problem", 2)]
    assert counts["drop:verified"] == 7 and counts["drop:per_problem"] == 1 and counts["kept"] == 2


def test_negatives_pair_wrong_traces_with_kept_ones_round_robin():
    _, kept, _, negatives = select({"rules": ["verified"], "negatives": {"max_per_problem": 2,
                                                                         "require": ["format_ok"]}})
    assert ids(kept) == ["t1", "t2", "t3", "t4", "t8", "t10", "t11"]
    pairs = pl.from_arrow(negatives).select("trace_id", "select__positive_trace_id").sort("trace_id").rows()
    # p2: t5 (t6 fails format_ok); p4: t9; p5: the two shortest wrong (t14 630, t13 640) paired with
    # kept t11 (600) then t10 (700); t12 exceeds max_per_problem
    assert pairs == [("t13", "t10"), ("t14", "t11"), ("t5", "t4"), ("t9", "t8")]
    assert "select__dropped_by" not in negatives.column_names


def test_difficulty_rules_and_length_budget():
    _, kept, _, _ = select({"rules": ["verified", {"drop_buckets": ["trivial"]}]})
    assert ids(kept) == ["t4", "t8", "t10", "t11"]  # p1 trivial dropped; p2, p4, p5 are medium/easy
    _, kept, _, _ = select({"rules": ["verified", {"length_budget": {"tokens": {"medium": 550}, "default": 10_000}}]})
    assert ids(kept) == ["t1", "t2", "t3", "t4"]  # medium p4 (900), p5 (700, 600) exceed 550; p1 is trivial
    _, kept, _, _ = select({"rules": ["verified", {"length_budget": {"tokens": {"medium": 450}}}]})
    assert ids(kept) == ["t1", "t2", "t3"]  # trivial has no budget here: unlimited


def test_where_rule_and_changed_threshold_reselects():
    _, kept, _, _ = select({"rules": [{"where": {"column": "completion_tokens", "max": 300}}]})
    assert ids(kept) == ["t1", "t2", "t3", "t5", "t6", "t7"]
    _, kept, _, _ = select({"rules": [{"where": {"column": "completion_tokens", "max": 100}}]})
    assert ids(kept) == ["t2", "t5", "t6", "t7"]


def test_budget_prefers_harder_problems_then_spreads():
    _, kept, _, _ = select({"rules": ["verified", {"budget": {"problems": 2, "prefer": ["medium", "easy", "trivial"]}}]})
    # p2 (1/3) and p5 (2/5) and p4 (1/2) are medium; ties broken by a seeded hash of the problem id
    chosen = sorted(set(pl.from_arrow(kept)["problem_id"].to_list()))
    assert len(chosen) == 2 and set(chosen) <= {"p2", "p4", "p5"}
    _, again, _, _ = select({"rules": ["verified", {"budget": {"problems": 2, "prefer": ["medium", "easy", "trivial"]}}]})
    assert ids(again) == ids(kept)  # reproducible


def test_missing_column_is_an_error_naming_rule_and_column_before_any_work():
    table = scored().drop(["format__ok"])
    stage = SelectStage(SelectConfig(policy={"rules": ["verified", "format_ok"]}))
    with pytest.raises(PolicyError, match="rule format_ok needs column format__ok"):
        stage.fit(table.to_batches())
    stage = SelectStage(SelectConfig(policy={"rules": [{"where": {"column": "judge__score", "min": 3}}]}))
    with pytest.raises(PolicyError, match="rule where:judge__score needs column judge__score"):
        stage.fit(scored().to_batches())
    stage = SelectStage(SelectConfig(policy={"rules": ["verified"]}))
    with pytest.raises(PolicyError, match="rule verified needs a verdict column"):
        stage.fit(scored().drop(["math__verdict"]).to_batches())


def test_invalid_policies_name_the_rule():
    with pytest.raises(PolicyError, match=r"rule 2 \(per_problem\)"):
        load_policy({"rules": ["verified", {"per_problem": {"max": 0}}]})
    with pytest.raises(PolicyError, match="rule 1"):
        load_policy({"rules": ["keep_everything"]})
    with pytest.raises(PolicyError, match="unique"):
        load_policy({"rules": ["verified", "verified"]})
    with pytest.raises(ValueError):
        SelectConfig(policy={"rules": ["verified"], "max_per_problm": 2})


def test_shipped_policies_load():
    from tests.conftest import REPO

    for path in sorted((REPO / "pipelines" / "policies").glob("*.yaml")):
        assert load_policy(path).rules, path
