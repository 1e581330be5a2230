"""What counts as a verified trace, from whichever verifier columns a run has."""

from __future__ import annotations

import polars as pl

VERIFIED = {"math__verdict": "correct", "code__verdict": "pass"}
# verdicts that say nothing about correctness (no reference, infrastructure failure)
UNCHECKED = {"no_reference", "no_tests", "sandbox_error", "no_code"}


def verified_expr(columns: list[str]) -> pl.Expr:
    expr = pl.lit(False)
    for col, value in VERIFIED.items():
        if col in columns:
            expr = expr | (pl.col(col) == value).fill_null(False)
    return expr


def checked_expr(columns: list[str]) -> pl.Expr:
    """True where some verifier gave a real verdict (right or wrong)."""
    expr = pl.lit(False)
    for col in VERIFIED:
        if col in columns:
            expr = expr | (pl.col(col).is_not_null() & ~pl.col(col).is_in(list(UNCHECKED)))
    return expr
