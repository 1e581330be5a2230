"""What counts as a verified trace, from whichever verifier columns a run has."""

from __future__ import annotations

import polars as pl

from curate.schemas.verdicts import UNCHECKED, VERIFIED

__all__ = ["UNCHECKED", "VERIFIED", "checked_expr", "verified_expr"]


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
