import pyarrow as pa

from curate.filters.exact import ExactDedupStage
from curate.testing import run_stage_in_memory


def _traces(rows):
    names = ("trace_id", "problem_id", "prompt", "reasoning", "answer")
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_groups_after_normalising_case_whitespace_and_latex_spacing():
    table = _traces([
        ("t3", "p1", "Find $x$ if $\\left( x+1 \\right) = 2$.", "Think.", "\\boxed{1}"),
        ("t1", "p2", "find x if ( x+1 ) = 2 .", "THINK.", "\\boxed{1}"),          # same problem and trace
        ("t2", "p3", "Find $\\dfrac{1}{2}\\,x$.", "Other.", "\\boxed{3}"),
        ("t0", "p4", "find \\frac{1}{2} x.", "Other.\n\n", " \\boxed{3}"),          # \dfrac, \, and whitespace
        ("t4", "p5", "A different problem.", None, None),                          # empty trace
        ("t5", "p6", "Yet another problem.", "", ""),                              # empty: not grouped with t4
    ])
    out = run_stage_in_memory(ExactDedupStage(), table, batch_rows=2)
    got = out.table.select(["trace_id", "exact__problem_group", "exact__trace_group", "exact__trace_group_size",
                            "exact__is_first"]).to_pylist()
    assert [tuple(r.values()) for r in got] == [
        ("t3", "p1", "t1", 2, False),
        ("t1", "p1", "t1", 2, True),
        ("t2", "p3", "t0", 2, False),
        ("t0", "p3", "t0", 2, True),
        ("t4", "p5", "t4", 1, True),
        ("t5", "p6", "t5", 1, True),
    ]
    assert out.counts["duplicate_traces"] == 2
    assert out.table.num_rows == 6  # adds columns, never drops rows


def test_first_is_independent_of_row_order():
    rows = [("b", "p", "q", "same", "1"), ("a", "p", "q", "same", "1"), ("c", "p", "q", "same", "1")]
    forward = run_stage_in_memory(ExactDedupStage(), _traces(rows)).table
    backward = run_stage_in_memory(ExactDedupStage(), _traces(rows[::-1])).table
    firsts = {r["trace_id"]: r["exact__is_first"] for r in forward.to_pylist()}
    assert firsts == {r["trace_id"]: r["exact__is_first"] for r in backward.to_pylist()} == {
        "a": True, "b": False, "c": False}
