"""The shared verdict vocabulary: which verifier outcomes count as checked and as verified."""

import polars as pl

from curate.filters.verdicts import checked_expr, verified_expr


def test_checked_and_verified_over_both_verifier_columns():
    frame = pl.DataFrame(
        {
            "math__verdict": ["correct", "incorrect", "no_reference", None, None, None, "timeout"],
            "code__verdict": [None, None, None, "pass", "unsupported_language", "sandbox_error", None],
        }
    )
    out = frame.select(
        checked_expr(frame.columns).alias("checked"), verified_expr(frame.columns).alias("verified")
    )
    assert out["checked"].to_list() == [True, True, False, True, False, False, True]
    assert out["verified"].to_list() == [True, False, False, True, False, False, False]


def test_a_run_without_verifier_columns_has_nothing_checked():
    frame = pl.DataFrame({"trace_id": ["a", "b"]})
    out = frame.with_columns(checked_expr(frame.columns).alias("c"), verified_expr(frame.columns).alias("v"))
    assert out["c"].to_list() == [False, False]
    assert out["v"].to_list() == [False, False]
