"""`curate dedup exact`: identical problems and identical traces after normalisation.

Two 64-bit hashes per row over normalised text (NFKC, case, LaTeX spacing and sizing such as
`\\,` `\\left(` `$`, `\\dfrac` -> `\\frac`, then all whitespace removed): the prompt (problem level) and reasoning +
answer (trace level).

Which row is "first" is decided by id, never by file or shard order, so it is the same on every
run and every executor: a problem group's id is its smallest `problem_id`, a trace group's id is
its smallest `trace_id`, and `exact__is_first` marks that one trace. (Ids are content hashes, so
this is an arbitrary but stable choice; use MinHash dedup's survivor policy to prefer verified or
shorter traces.) Empty texts (errored generations) are never grouped with each other.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa

from curate.filters.dedup_state import join_sorted, sorted_state
from curate.filters.text_norm import normalise_for_match, response_text
from curate.stage import BatchResult, Stage, StageConfig


class ExactDedupConfig(StageConfig):
    pass


def _squeeze(expr: pl.Expr) -> pl.Expr:
    """normalise_for_match, then no whitespace at all: `$x$.` and `x .` differ only in spacing."""
    return normalise_for_match(expr).str.replace_all(r"\s+", "")


def _group(key: str, text_hash: str, empty: str) -> pl.Expr:
    """Smallest `key` among rows with the same hash; the row's own key when its text is empty."""
    return pl.when(pl.col(empty)).then(pl.col(key)).otherwise(pl.col(key).min().over(text_hash))


class ExactDedupStage(Stage[ExactDedupConfig]):
    name = "dedup_exact"
    version = "2"
    config_model = ExactDedupConfig
    description = ("Exact duplicates of problems (prompt) and traces (reasoning + answer) after normalising "
                   "case, whitespace and LaTeX spacing; the smallest id of each group is its first.")
    example = "curate dedup exact runs/demo/02-verify_math"
    cli = ("dedup", "exact")
    requires = ("trace_id", "problem_id")
    fit_columns = ("trace_id", "problem_id", "prompt", "reasoning", "answer")
    score_namespace = "exact"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("problem_group"), pa.string()), pa.field(self.col("trace_group"), pa.string()),
                pa.field(self.col("trace_group_size"), pa.int64()), pa.field(self.col("is_first"), pa.bool_())]

    def fit(self, batches) -> pa.Table:
        parts = []
        for batch in batches:
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            prompt = _squeeze(pl.col("prompt"))
            response = _squeeze(response_text(pl.col("reasoning"), pl.col("answer")))
            parts.append(frame.select(
                "trace_id", "problem_id",
                prompt.hash(seed=7).alias("_p"), (prompt == "").alias("_p_empty"),
                response.hash(seed=7).alias("_t"), (response == "").alias("_t_empty"),
            ))
        if not parts:
            return pa.schema([pa.field("trace_id", pa.string()), *self.output_fields()]).empty_table()
        frame = pl.concat(parts).unique("trace_id", keep="first")  # equal ids are one trace (content hash)
        grouped = frame.with_columns(
            _group("problem_id", "_p", "_p_empty").alias(self.col("problem_group")),
            _group("trace_id", "_t", "_t_empty").alias(self.col("trace_group")),
        )
        return grouped.select(
            "trace_id", self.col("problem_group"), self.col("trace_group"),
            pl.len().over(self.col("trace_group")).cast(pl.Int64).alias(self.col("trace_group_size")),
            (pl.col("trace_id") == pl.col(self.col("trace_group"))).alias(self.col("is_first")),
        ).to_arrow()

    def load_state(self, state: pa.Table | None) -> None:
        self.state = state
        self._sorted = sorted_state(state)

    def process(self, batch: pa.Table) -> BatchResult:
        table, out = join_sorted(batch, self._sorted)
        counts = Counter(duplicate_traces=int((~out[self.col("is_first")].fill_null(True)).sum()),
                         rows_in_merged_problems=int((pl.from_arrow(batch["problem_id"]) != out[self.col("problem_group")]).sum()))
        return BatchResult(table, counts=counts)
