"""`curate verify math`: is the trace's final answer equal to the reference answer?

Per batch:

1. **Extract** the final answer (last ``\\boxed{}``, a choice letter, an "Answer:" statement, the
   answer's last number; the reasoning's tail when the answer part has none) and **normalise**
   both sides, as polars expressions over the whole batch (`math_extract`).
2. **Decide cheaply** what needs no sympy: no reference, nothing extracted, choice letters,
   normalised strings that are equal, two different integers.
3. **Verify the rest with math-verify** in a pool of worker processes (`math_pool`), each pair
   under a hard time limit: SIGALRM inside the worker, and a kill-and-replace of a worker that
   the alarm could not interrupt. A timeout is a verdict, never a crash. Workers keep each
   reference they parsed, and pairs reach them grouped by reference, so a reference is parsed
   once per worker, not once per trace.

Columns (never a bare 0):

* ``math__pred``: the extracted answer (null when none was found);
* ``math__verdict``: correct, incorrect, no_reference, unparseable_reference,
  unparseable_prediction, timeout, error (math-verify raised or its worker died twice);
* ``math__method``: how the verdict was reached: exact_match, integer, choice_letter,
  math_verify, math_verify:equation_sides, alarm, killed, none;
* ``math__source``: where the answer was found, e.g. ``answer:boxed``,
  ``reasoning_tail:answer_line``.

The stage runs its own pool over all cores (``workers``), so it asks the runner for that many
cores and the runner runs one copy of it: the cheap vectorised part is done once per batch, and
only the pairs that need sympy fan out.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.stage import BatchResult, Resources, Stage, StageConfig
from curate.verifiers.math_extract import (
    choice_letter_expr,
    extract_answer_expr,
    is_integer_expr,
    normalise_expr,
    reference_expr,
)
from curate.verifiers.math_pool import MathVerifyPool, available_cores

VERDICTS = (
    "correct",
    "incorrect",
    "no_reference",
    "unparseable_reference",
    "unparseable_prediction",
    "timeout",
    "error",
)


class MathVerifyConfig(StageConfig):
    timeout_s: float = Field(5.0, gt=0, description="Hard time limit per trace for parsing and comparing (seconds).")
    float_rounding: int = Field(6, ge=0, description="Decimal places to which floats are compared.")
    domains: list[str] = Field(["math", "science"], description="Domains verified; other rows get no_reference.")
    workers: int = Field(0, ge=0, description="Worker processes for math-verify; 0 = every available core.")
    shortcuts: bool = Field(True, description="Decide equal normalised strings and different integers without sympy.")


class MathVerifyStage(Stage[MathVerifyConfig]):
    name = "verify_math"
    version = "2"
    config_model = MathVerifyConfig
    description = "Check each trace's final answer against the reference answer with math-verify (typed verdicts, hard timeouts)."
    example = "curate verify math runs/demo --timeout-s 5 --workers 2"
    cli = ("verify", "math")
    requires = ("reference_answer", "answer", "reasoning", "domain")
    score_namespace = "math"
    batch_rows = 4096

    def __init__(self, config: MathVerifyConfig | None = None):
        super().__init__(config)
        self._pool: MathVerifyPool | None = None

    @property
    def workers(self) -> int:
        return self.config.workers or available_cores()

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        # The stage fans out itself; the runner should run one copy holding all its cores.
        return Resources(cpus=self.workers, max_workers=1)

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col(name), pa.string()) for name in ("pred", "verdict", "method", "source")]

    def setup(self) -> None:
        self._pool = MathVerifyPool(self.workers, self.config.timeout_s, self.config.float_rounding)

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self):
        # Shipped to runner workers before setup(); a live pool never travels.
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    # -- the vectorised part -------------------------------------------------------------------
    def _triage(self, batch: pa.Table) -> pl.DataFrame:
        """pred, source and every verdict that needs no sympy (null verdict: ask math-verify)."""
        cfg = self.config
        frame = pl.from_arrow(batch.select(list(self.requires)))
        frame = frame.select(
            reference_expr(pl.col("reference_answer")).alias("ref"),
            pl.col("domain").cast(pl.Utf8).is_in(cfg.domains).fill_null(False).alias("in_domain"),
            extract_answer_expr(pl.col("answer").cast(pl.Utf8), pl.col("reasoning").cast(pl.Utf8),
                                pl.col("reference_answer").cast(pl.Utf8)).alias("x"),
        ).unnest("x")
        frame = frame.with_columns(
            normalise_expr(pl.col("ref")).alias("ref_norm"),
            normalise_expr(pl.col("pred")).alias("pred_norm"),
            choice_letter_expr(pl.col("ref")).alias("ref_letter"),
            choice_letter_expr(pl.col("pred")).alias("pred_letter"),
        )
        no_ref = ~pl.col("in_domain") | pl.col("ref").is_null()
        letters = pl.col("ref_letter").is_not_null()
        shortcut = pl.lit(cfg.shortcuts)
        integers = shortcut & is_integer_expr(pl.col("ref_norm")) & is_integer_expr(pl.col("pred_norm"))
        decided = (
            pl.when(no_ref).then(pl.struct(verdict=pl.lit("no_reference"), method=pl.lit("none")))
            .when(pl.col("pred").is_null())
            .then(pl.struct(verdict=pl.lit("unparseable_prediction"), method=pl.lit("none")))
            .when(letters & pl.col("pred_letter").is_null())
            .then(pl.struct(verdict=pl.lit("unparseable_prediction"), method=pl.lit("choice_letter")))
            .when(letters)
            .then(pl.struct(
                verdict=pl.when(pl.col("pred_letter") == pl.col("ref_letter")).then(pl.lit("correct"))
                .otherwise(pl.lit("incorrect")),
                method=pl.lit("choice_letter")))
            .when(shortcut & (pl.col("pred_norm") == pl.col("ref_norm")))
            .then(pl.struct(verdict=pl.lit("correct"), method=pl.lit("exact_match")))
            .when(integers)
            .then(pl.struct(verdict=pl.lit("incorrect"), method=pl.lit("integer")))
        )
        return frame.with_columns(decided.alias("d")).unnest("d").with_columns(
            pl.when(no_ref).then(None).otherwise(pl.col("pred")).alias("pred"),
            pl.when(no_ref).then(None).otherwise(pl.col("source")).alias("source"),
        )

    def process(self, batch: pa.Table) -> BatchResult:
        frame = self._triage(batch)
        todo = frame.with_row_index("_i").filter(pl.col("verdict").is_null())
        verdicts = frame["verdict"].to_list()
        methods = frame["method"].to_list()
        if todo.height:
            if self._pool is None:
                self.setup()
            pairs = list(zip(todo["pred"].to_list(), todo["ref"].to_list(), strict=True))
            for i, (verdict, method) in zip(todo["_i"].to_list(), self._pool.run(pairs), strict=True):
                verdicts[i], methods[i] = verdict, method
        counts: Counter[str] = Counter(f"verdict:{v}" for v in verdicts)
        counts.update(f"method:{m}" for m in methods)
        out = batch
        columns = {"pred": frame["pred"].to_list(), "verdict": verdicts, "method": methods,
                   "source": frame["source"].to_list()}
        for name, values in columns.items():
            out = out.append_column(self.col(name), pa.array(values, pa.string()))
        return BatchResult(out, counts=counts)

    def summarize(self, counts: Counter[str]) -> dict:
        total = sum(v for k, v in counts.items() if k.startswith("verdict:"))
        return {"verdicts": {v: counts.get(f"verdict:{v}", 0) for v in VERDICTS}, "traces": total}
