"""`curate dedup exact`: identical problems and identical traces after normalisation.

Two hashes per row over normalised text (case, whitespace, LaTeX spacing): the prompt (problem
level) and reasoning + answer (trace level). Group ids are the first member's id (smallest
`problem_id` / `trace_id`), so they are stable across runs and orderings; `exact__is_first`
marks exactly one trace per trace group.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa

from curate.filters.text_norm import normalise_for_match, response_text
from curate.stage import BatchResult, Stage, StageConfig


class ExactDedupConfig(StageConfig):
    pass


class ExactDedupStage(Stage[ExactDedupConfig]):
    name = "dedup_exact"
    version = "1"
    config_model = ExactDedupConfig
    description = "Exact duplicates of problems and traces after normalisation (case, whitespace, LaTeX spacing)."
    example = "curate dedup exact runs/demo"
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
            parts.append(frame.select(
                "trace_id", "problem_id",
                normalise_for_match(pl.col("prompt")).hash(seed=7).alias("_p"),
                normalise_for_match(response_text(pl.col("reasoning"), pl.col("answer"))).hash(seed=7).alias("_t"),
            ))
        frame = pl.concat(parts) if parts else pl.DataFrame(schema={"trace_id": pl.Utf8, "problem_id": pl.Utf8,
                                                                    "_p": pl.UInt64, "_t": pl.UInt64})
        return frame.select(
            "trace_id",
            pl.col("problem_id").min().over("_p").alias(self.col("problem_group")),
            pl.col("trace_id").min().over("_t").alias(self.col("trace_group")),
            pl.len().over("_t").cast(pl.Int64).alias(self.col("trace_group_size")),
        ).with_columns((pl.col("trace_id") == pl.col(self.col("trace_group"))).alias(self.col("is_first"))).to_arrow()

    def process(self, batch: pa.Table) -> BatchResult:
        state = pl.from_arrow(self.state)
        out = pl.from_arrow(batch).join(state, on="trace_id", how="left", maintain_order="left")
        counts = Counter(duplicate_traces=int((~out[self.col("is_first")]).sum()),
                         problems_merged=int((out["problem_id"] != out[self.col("problem_group")]).sum()))
        return BatchResult(out.to_arrow(), counts=counts)
