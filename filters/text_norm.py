"""Text normalisation shared by exact dedup and decontamination (polars expressions)."""

from __future__ import annotations

import polars as pl

# LaTeX spacing and sizing commands that change no meaning.
_LATEX_NOISE = r"\\[,;:!]|\\quad|\\qquad|\\left|\\right|\\displaystyle|\\ |\$"


def normalise_for_match(expr: pl.Expr) -> pl.Expr:
    """Lower case, NFKC, LaTeX spacing removed, `\\dfrac`->`\\frac`, whitespace collapsed."""
    return (
        expr.fill_null("")
        .str.normalize("NFKC")
        .str.to_lowercase()
        # the replacement is not a regex: one backslash (r"\\frac" would insert two)
        .str.replace_all(r"\\[dt]frac", "\\frac", literal=False)
        .str.replace_all(r"\\[dt]binom", "\\binom", literal=False)
        .str.replace_all(_LATEX_NOISE, " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def response_text(reasoning: pl.Expr, answer: pl.Expr) -> pl.Expr:
    return pl.concat_str([reasoning.fill_null(""), answer.fill_null("")], separator="\n")
