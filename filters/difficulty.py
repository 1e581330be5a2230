"""`curate difficulty RUN`: per-problem pass rate across teachers and samples, a bucket, and
per-teacher statistics.

Verdicts come from whichever verifier columns the run has (math__verdict == "correct",
code__verdict == "pass"; see `filters/verdicts.py`); a trace with no real verdict (no reference,
sandbox error, no verifier column at all) is not counted.

Columns on every trace row:

* difficulty__pass_rate: verified / checked traces of the problem (null when none was checked)
* difficulty__checked, difficulty__verified: those counts
* difficulty__teachers: teachers with a checked trace; difficulty__solved_by: teachers with a verified one
* difficulty__bucket: unknown (nothing checked), unsolved (0), hard (< hard_below), medium
  (< easy_from), easy (< 1), trivial (every checked trace verified)

`teacher_stats(step_dir or table)` gives per-teacher statistics (traces, checked, pass rate, token
length p10/p50/p90/mean, truncated share); they also go into the step's manifest summary.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator

from curate.filters.verdicts import VERIFIED, checked_expr, verified_expr
from curate.stage import BatchResult, Stage, StageConfig

BUCKETS = ("unknown", "unsolved", "hard", "medium", "easy", "trivial")
_LENGTH_COLUMNS = ("completion_tokens", "format__tokens")


class DifficultyConfig(StageConfig):
    hard_below: float = Field(0.3, gt=0, le=1, description="Pass rate below which a solved problem is hard.")
    easy_from: float = Field(0.7, gt=0, le=1, description="Pass rate from which a problem is easy.")

    @model_validator(mode="after")
    def _ordered(self) -> DifficultyConfig:
        if self.hard_below > self.easy_from:
            raise ValueError(f"hard_below ({self.hard_below}) must not exceed easy_from ({self.easy_from})")
        return self


def _length_expr(columns: list[str]) -> pl.Expr:
    for name in _LENGTH_COLUMNS:
        if name in columns:
            return pl.col(name).cast(pl.Float64)
    return pl.lit(None, pl.Float64)


def _truncated_expr(columns: list[str]) -> pl.Expr:
    expr = pl.lit(False)
    if "finish_reason" in columns:
        expr = expr | (pl.col("finish_reason") == "length").fill_null(False)
    if "format__truncated" in columns:
        expr = expr | pl.col("format__truncated").fill_null(False)
    return expr


def teacher_stats_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-teacher statistics of a trace frame with verdict, length and finish columns (any subset)."""
    cols = frame.columns
    length = _length_expr(cols)
    return (frame.with_columns(verified_expr(cols).alias("_ok"), checked_expr(cols).alias("_checked"),
                               length.alias("_len"), _truncated_expr(cols).alias("_trunc"))
            .group_by("teacher").agg(
                pl.len().cast(pl.Int64).alias("traces"),
                pl.col("problem_id").n_unique().cast(pl.Int64).alias("problems"),
                pl.col("_checked").sum().cast(pl.Int64).alias("checked"),
                pl.col("_ok").sum().cast(pl.Int64).alias("verified"),
                (pl.col("_ok").sum() / pl.col("_checked").sum()).alias("pass_rate"),
                pl.col("_len").quantile(0.1, "nearest").alias("tokens_p10"),
                pl.col("_len").median().alias("tokens_p50"),
                pl.col("_len").quantile(0.9, "nearest").alias("tokens_p90"),
                pl.col("_len").mean().alias("tokens_mean"),
                pl.col("_trunc").mean().alias("truncated_share"))
            .with_columns(pl.col("pass_rate").fill_nan(None))
            .sort("teacher"))


def teacher_stats(source: str | Path | pa.Table) -> pa.Table:
    """Per-teacher statistics of a step folder (its part-*.parquet) or of a table."""
    if isinstance(source, pa.Table):
        return teacher_stats_frame(pl.from_arrow(source)).to_arrow()
    parts = sorted(Path(source).glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{source} holds no part-*.parquet files")
    wanted = {"teacher", "problem_id", "finish_reason", "format__truncated", *VERIFIED, *_LENGTH_COLUMNS}
    frame = pl.concat([pl.read_parquet(p, columns=[c for c in pl.read_parquet_schema(p) if c in wanted])
                       for p in parts], how="diagonal_relaxed")
    return teacher_stats_frame(frame).to_arrow()


class DifficultyStage(Stage[DifficultyConfig]):
    name = "difficulty"
    version = "2"
    config_model = DifficultyConfig
    description = "Per-problem pass rate across teachers and samples, a difficulty bucket, per-teacher statistics."
    example = "curate difficulty runs/demo --hard-below 0.3 --easy-from 0.7"
    cli = ("difficulty",)
    requires = ("problem_id", "teacher")
    fit_columns = ("problem_id", "teacher")
    fit_optional_columns = (*VERIFIED, "completion_tokens", "format__tokens", "finish_reason", "format__truncated")
    score_namespace = "difficulty"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("pass_rate"), pa.float64()), pa.field(self.col("checked"), pa.int64()),
                pa.field(self.col("verified"), pa.int64()), pa.field(self.col("teachers"), pa.int64()),
                pa.field(self.col("solved_by"), pa.int64()), pa.field(self.col("bucket"), pa.string())]

    def bucket_expr(self, rate: pl.Expr, checked: pl.Expr) -> pl.Expr:
        cfg = self.config
        return (pl.when(checked == 0).then(pl.lit("unknown"))
                .when(rate == 0).then(pl.lit("unsolved"))
                .when(rate < cfg.hard_below).then(pl.lit("hard"))
                .when(rate < cfg.easy_from).then(pl.lit("medium"))
                .when(rate < 1).then(pl.lit("easy"))
                .otherwise(pl.lit("trivial")))

    def fit(self, batches) -> pa.Table:
        frames = [pl.from_arrow(pa.Table.from_batches([b])) for b in batches]
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(
            schema={"problem_id": pl.Utf8, "teacher": pl.Utf8})
        cols = frame.columns
        scored = frame.with_columns(verified_expr(cols).alias("_ok"), checked_expr(cols).alias("_checked"))
        per_problem = scored.group_by("problem_id").agg(
            pl.col("_checked").sum().cast(pl.Int64).alias(self.col("checked")),
            pl.col("_ok").sum().cast(pl.Int64).alias(self.col("verified")),
            pl.col("teacher").filter(pl.col("_checked")).n_unique().cast(pl.Int64).alias(self.col("teachers")),
            pl.col("teacher").filter(pl.col("_ok")).n_unique().cast(pl.Int64).alias(self.col("solved_by")),
        )
        checked, verified = pl.col(self.col("checked")), pl.col(self.col("verified"))
        rate = pl.when(checked > 0).then(verified / checked)
        per_problem = per_problem.with_columns(rate.alias(self.col("pass_rate"))).with_columns(
            self.bucket_expr(pl.col(self.col("pass_rate")), checked).alias(self.col("bucket")))
        self._teacher_stats = teacher_stats_frame(frame).to_dicts()
        return per_problem.select("problem_id", *[f.name for f in self.output_fields()]).to_arrow()

    def summarize(self, counts: Counter) -> dict:
        out = {"trace_buckets": {b: counts.get(f"bucket:{b}", 0) for b in BUCKETS}}
        if hasattr(self, "_teacher_stats"):
            out["teachers"] = self._teacher_stats
        return out

    def process(self, batch: pa.Table) -> BatchResult:
        out = pl.from_arrow(batch).join(pl.from_arrow(self.state), on="problem_id", how="left",
                                        maintain_order="left")
        counts = Counter({f"bucket:{b}": n for b, n in out.group_by(self.col("bucket")).len().rows()})
        return BatchResult(out.to_arrow(), counts=counts)
