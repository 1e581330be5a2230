"""`curate difficulty`: per-problem pass rate across teachers and samples, and a bucket.

Columns on every trace row: difficulty__pass_rate (verified / checked traces of the problem),
difficulty__solved_by (teachers with at least one verified trace), difficulty__teachers (teachers
with a checked trace), difficulty__bucket: unsolved (0), hard (< 0.3), medium (< 0.7), easy (< 1),
trivial (every checked trace verified), unknown (nothing checkable). Per-teacher statistics (pass
rate, median tokens, truncated share) go to the manifest's summary.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.filters.verdicts import checked_expr, verified_expr
from curate.stage import BatchResult, Stage, StageConfig


class DifficultyConfig(StageConfig):
    hard_below: float = Field(0.3, description="Pass rate below which a solved problem is hard.")
    easy_from: float = Field(0.7, description="Pass rate from which a problem is easy.")


class DifficultyStage(Stage[DifficultyConfig]):
    name = "difficulty"
    version = "1"
    config_model = DifficultyConfig
    description = "Per-problem pass rate across teachers and samples, a difficulty bucket, per-teacher statistics."
    example = "curate difficulty runs/demo --hard-below 0.3 --easy-from 0.7"
    cli = ("difficulty",)
    requires = ("problem_id", "teacher")
    fit_columns = ("trace_id", "problem_id", "teacher")
    fit_optional_columns = ("math__verdict", "code__verdict", "format__tokens", "format__truncated")
    score_namespace = "difficulty"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("pass_rate"), pa.float64()), pa.field(self.col("solved_by"), pa.int64()),
                pa.field(self.col("teachers"), pa.int64()), pa.field(self.col("bucket"), pa.string())]

    def fit(self, batches) -> pa.Table:
        frame = pl.concat([pl.from_arrow(pa.Table.from_batches([b])) for b in batches], how="diagonal_relaxed")
        cols = frame.columns
        frame = frame.with_columns(verified_expr(cols).alias("_ok"), checked_expr(cols).alias("_checked"))
        per_problem = frame.group_by("problem_id").agg(
            (pl.col("_ok").sum() / pl.col("_checked").sum()).alias(self.col("pass_rate")),
            pl.col("teacher").filter(pl.col("_ok")).n_unique().cast(pl.Int64).alias(self.col("solved_by")),
            pl.col("teacher").filter(pl.col("_checked")).n_unique().cast(pl.Int64).alias(self.col("teachers")),
            pl.col("_checked").sum().alias("_n"),
        )
        rate = pl.col(self.col("pass_rate"))
        bucket = (
            pl.when(pl.col("_n") == 0).then(pl.lit("unknown"))
            .when(rate == 0).then(pl.lit("unsolved"))
            .when(rate < self.config.hard_below).then(pl.lit("hard"))
            .when(rate < self.config.easy_from).then(pl.lit("medium"))
            .when(rate < 1).then(pl.lit("easy"))
            .otherwise(pl.lit("trivial"))
        )
        per_problem = per_problem.with_columns(bucket.alias(self.col("bucket")), rate.fill_nan(None)).drop("_n")
        stats = frame.group_by("teacher").agg(
            pl.len().alias("traces"),
            (pl.col("_ok").sum() / pl.col("_checked").sum()).alias("pass_rate"),
            *([pl.col("format__tokens").median().alias("median_tokens")] if "format__tokens" in cols else []),
            *([pl.col("format__truncated").mean().alias("truncated_share")] if "format__truncated" in cols else []),
        ).sort("teacher")
        self._teacher_stats = stats.fill_nan(None).to_dicts()
        self._buckets = dict(per_problem.group_by(self.col("bucket")).len().rows())
        return per_problem.to_arrow()

    def summarize(self, counts) -> dict:
        return {"teachers": getattr(self, "_teacher_stats", []), "problem_buckets": getattr(self, "_buckets", {})}

    def process(self, batch: pa.Table) -> BatchResult:
        out = pl.from_arrow(batch).join(pl.from_arrow(self.state), on="problem_id", how="left", maintain_order="left")
        counts = Counter(f"bucket:{b}" for b in out[self.col("bucket")].to_list())
        return BatchResult(out.to_arrow(), counts=counts)
