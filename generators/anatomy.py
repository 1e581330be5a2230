"""Trace anatomy: split a teacher's raw response into reasoning and answer, vectorised.

Teachers mark their thinking in a few ways, all handled here:

* ``<think> ... </think> answer`` (DeepSeek-R1, QwQ, Qwen3, AM-Thinking). R1-style chat templates
  put ``<think>`` in the prompt, so the response may hold only the closing tag.
* ``<|begin_of_thought|> ... <|end_of_thought|> <|begin_of_solution|> answer <|end_of_solution|>``
  (OpenThoughts, Bespoke-Stratos, Sky-T1).
* no marker at all: the whole response is the answer.

A thinking section that was opened but never closed (the teacher ran out of tokens) keeps its
text as reasoning, gets a null answer and ``think_closed = False``, so the format verifier can tell
"truncated while thinking" from "closed the thought but answered nothing" (answer = "").
"""

from __future__ import annotations

import polars as pl

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|begin_of_thought|>", "<|end_of_thought|>"
SOLUTION_OPEN, SOLUTION_CLOSE = "<|begin_of_solution|>", "<|end_of_solution|>"

# Wrappers some datasets put around the final answer (AM-Thinking: <answer>...</answer>).
_ANSWER_WRAPPERS = r"^\s*(?:<answer>|<\|begin_of_solution\|>)|(?:</answer>|<\|end_of_solution\|>)\s*$"


def _strip(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars()


def split_reasoning(text: pl.Expr) -> pl.Expr:
    """A struct expression with fields ``reasoning``, ``answer`` and ``think_closed``."""
    think_split = text.str.splitn(THINK_CLOSE, 2)
    thought_split = text.str.splitn(THOUGHT_CLOSE, 2)
    has_think_close = text.str.contains(THINK_CLOSE, literal=True)
    has_thought_close = text.str.contains(THOUGHT_CLOSE, literal=True)
    opens_think = text.str.contains(r"^\s*<think>")
    opens_thought = text.str.contains(r"^\s*<\|begin_of_thought\|>")

    reasoning = (
        pl.when(has_think_close)
        .then(think_split.struct.field("field_0").str.replace(r"^\s*<think>", ""))
        .when(has_thought_close)
        .then(thought_split.struct.field("field_0").str.replace(r"^\s*<\|begin_of_thought\|>", ""))
        .when(opens_think)
        .then(text.str.replace(r"^\s*<think>", ""))
        .when(opens_thought)
        .then(text.str.replace(r"^\s*<\|begin_of_thought\|>", ""))
        .otherwise(pl.lit(None, pl.Utf8))
    )
    answer = (
        pl.when(has_think_close)
        .then(think_split.struct.field("field_1"))
        .when(has_thought_close)
        .then(thought_split.struct.field("field_1"))
        .when(opens_think | opens_thought)
        .then(pl.lit(None, pl.Utf8))
        .otherwise(text)
    )
    closed = (
        pl.when(has_think_close | has_thought_close)
        .then(pl.lit(True))
        .when(opens_think | opens_thought)
        .then(pl.lit(False))
        .otherwise(pl.lit(None, pl.Boolean))
    )
    return pl.struct(
        _strip(reasoning).alias("reasoning"),
        _strip(_strip(answer).str.replace_all(_ANSWER_WRAPPERS, "")).alias("answer"),
        closed.alias("think_closed"),
    )


def split_frame(frame: pl.DataFrame, text_column: str) -> pl.DataFrame:
    """``frame`` with ``reasoning``, ``answer`` and ``think_closed`` columns from ``text_column``."""
    return frame.with_columns(split_reasoning(pl.col(text_column)).alias("_split")).unnest("_split")


def merge_separate_reasoning(reasoning: pl.Expr, content: pl.Expr) -> pl.Expr:
    """Servers that return ``reasoning_content`` apart from ``content`` (vLLM's reasoning parsers,
    DeepSeek's API) may still leave it null with some chat templates; then the tags are in
    ``content`` and `split_reasoning` applies. Returns the same struct as `split_reasoning`."""
    parsed = split_reasoning(content)
    has_separate = reasoning.is_not_null() & (reasoning.str.strip_chars() != "")
    return (
        pl.when(has_separate)
        .then(
            pl.struct(
                _strip(reasoning).alias("reasoning"),
                _strip(content.fill_null("")).alias("answer"),
                pl.lit(True).alias("think_closed"),
            )
        )
        .otherwise(parsed)
    )
