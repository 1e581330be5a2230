"""`curate select RUN --policy FILE`: apply a declarative policy (`filters/policy.py`) over the score
columns. The only stage that drops rows.

It is a global stage whose fit reads only the columns the policy's rules name (ids, verdicts,
score columns, token counts; never the trace text unless `pick: diverse` asks for it), so changing a
threshold and re-selecting a million traces takes seconds. The fit decides every trace once:
`select__dropped_by` (the first rule that dropped it, null when kept) and, for a negative,
`select__positive_trace_id` (a kept trace of the same problem). That decision table is the step's
`_state.parquet`; `process` joins it onto each batch, writes the kept rows and the negatives side
output (`<step>/negatives/part-*.parquet`: wrong traces of kept problems, each paired with a right
one, as REDI trains on). The funnel (rows left after each rule, in order) goes to the manifest
summary, from per-batch `drop:<rule>` counters.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, field_validator

from curate.filters import policy as pol
from curate.filters.verdicts import checked_expr, verified_expr
from curate.stage import BatchResult, Stage, StageConfig

PolicyError = pol.PolicyError
_NEGATIVE = "select__positive_trace_id"


class SelectConfig(StageConfig):
    policy: str | dict = Field("pipelines/policies/default.yaml",
                               description="Policy YAML file, or the policy inline (JSON on the command line).")

    @field_validator("policy")
    @classmethod
    def _valid(cls, value: str | dict) -> str | dict:
        if isinstance(value, dict):
            pol.load_policy(value)  # an inline policy is checked when the config is built
        return value

    def load(self) -> pol.Policy:
        return pol.load_policy(self.policy)


class SelectStage(Stage[SelectConfig]):
    name = "select"
    version = "2"
    config_model = SelectConfig
    description = ("Apply a selection policy over the score columns: the curated set, a funnel per rule, and "
                   "negatives paired with positives.")
    example = "curate select runs/demo --policy pipelines/policies/default.yaml"
    cli = ("select",)
    requires = ("trace_id", "problem_id")
    fit_columns = ("trace_id", "problem_id")
    score_namespace = "select"

    @property
    def policy(self) -> pol.Policy:
        if not hasattr(self, "_policy"):
            self._policy = self.config.load()
        return self._policy

    @property
    def fit_optional_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(c for c in pol.all_columns(self.policy) if c not in self.fit_columns)

    def output_fields(self) -> list[pa.Field]:
        return []  # kept rows leave with the columns they came with

    def fingerprint(self) -> dict:
        # a policy file's content, not its path, decides whether selection must re-run
        return {**super().fingerprint(), "policy": self.policy.model_dump(mode="json")}

    # -- fit: decide every trace ----------------------------------------------------------------
    def fit(self, batches) -> pa.Table:
        policy = self.policy
        frames = []
        for batch in batches:
            frame = pl.from_arrow(pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch)
            if not frames:
                pol.check_columns(policy, frame.columns)  # before any work
            frames.append(frame)
        if not frames:
            return pa.table({"trace_id": pa.array([], pa.string()), self.col("dropped_by"): pa.array([], pa.string()),
                             _NEGATIVE: pa.array([], pa.string())})
        frame = pl.concat(frames, how="diagonal_relaxed")
        columns = frame.columns
        length_cols = [c for c in pol.length_columns(policy, columns) if c in columns]
        frame = frame.with_columns(
            (pl.coalesce([pl.col(c).cast(pl.Float64) for c in length_cols]) if length_cols
             else pl.lit(None, pl.Float64)).alias("_len"),
            pl.lit(None, pl.Utf8).alias("_dropped_by"))
        funnel = [("input", frame.height)]
        for rule in policy.rules:
            name = pol.rule_name(rule)
            alive = frame["_dropped_by"].is_null()
            keep = self._keep(rule, frame, alive, policy).fill_null(True)
            frame = frame.with_columns(pl.when(alive & ~keep).then(pl.lit(name)).otherwise(pl.col("_dropped_by"))
                                       .alias("_dropped_by"))
            funnel.append((name, int(frame["_dropped_by"].is_null().sum())))
        self._funnel = funnel
        positive = self._negatives(frame, policy)
        return frame.select("trace_id", pl.col("_dropped_by").alias(self.col("dropped_by")),
                            positive.alias(_NEGATIVE)).to_arrow()

    def _keep(self, rule, frame: pl.DataFrame, alive: pl.Series, policy: pol.Policy) -> pl.Series:
        cols = frame.columns

        def ev(expr: pl.Expr) -> pl.Series:
            return frame.select(expr.alias("k"))["k"]

        if isinstance(rule, pol.Verified):
            return ev(verified_expr(cols))
        if isinstance(rule, pol.FormatOk):
            return ev(pl.col("format__ok").fill_null(False))
        if isinstance(rule, pol.NotContaminated):
            hit = pl.col("decon__benchmark").is_not_null()
            if rule.fields:
                hit = hit & pl.col("decon__field").is_in(rule.fields)
            if rule.methods:
                hit = hit & pl.col("decon__method").is_in(rule.methods)
            if rule.min_score:
                hit = hit & (pl.col("decon__score") >= rule.min_score)
            # a problem is contaminated when any of its rows is (a trace reciting a benchmark item too)
            return ev(~hit.fill_null(False).any().over("problem_id"))
        if isinstance(rule, pol.Survivors):
            return ev(pl.all_horizontal([pl.col(pol.DUP_COLUMNS[m]).fill_null(True) for m in rule.methods]))
        if isinstance(rule, pol.DropSolvedByAll):
            solved, teachers = pl.col("difficulty__solved_by"), pl.col("difficulty__teachers")
            return ev(~((solved >= teachers) & (teachers >= rule.min_teachers)).fill_null(False))
        if isinstance(rule, pol.DropBuckets):
            return ev(~pl.col("difficulty__bucket").fill_null("unknown").is_in(rule.buckets))
        if isinstance(rule, pol.Where):
            return ev(_where(rule))
        if isinstance(rule, pol.LengthBudget):
            budget = pl.col("difficulty__bucket").fill_null("unknown").replace_strict(
                rule.tokens, default=rule.default, return_dtype=pl.Float64)
            return ev(budget.is_null() | pl.col("_len").is_null() | (pl.col("_len") <= budget))
        if isinstance(rule, pol.PerProblem):
            if rule.pick == "diverse":
                return _diverse(frame, alive, rule)
            order = frame.with_columns(alive.alias("_alive")).with_row_index("_r").sort(
                "_len", "trace_id", nulls_last=True)
            rank = order.with_columns(pl.int_range(1, pl.len() + 1).over("problem_id", "_alive").alias("_rank"))
            return rank.sort("_r")["_rank"] <= rule.max
        if isinstance(rule, pol.Budget):
            chosen = _budget(frame.filter(alive), rule)
            return frame["problem_id"].is_in(chosen.implode())
        raise PolicyError(f"unknown rule {rule!r}")

    def _negatives(self, frame: pl.DataFrame, policy: pol.Policy) -> pl.Series:
        """For each wrong trace of a kept problem (up to max_per_problem), a kept trace to pair with."""
        cols = frame.columns
        if not policy.negatives or not any(c in cols for c in ("math__verdict", "code__verdict")):
            return pl.Series(_NEGATIVE, [None] * frame.height, pl.Utf8)
        wrong = checked_expr(cols) & ~verified_expr(cols)
        if "format_ok" in policy.negatives.require:
            wrong = wrong & pl.col("format__ok").fill_null(False)
        if "not_contaminated" in policy.negatives.require:
            wrong = wrong & pl.col("decon__benchmark").is_null()
        kept = frame.filter(pl.col("_dropped_by").is_null()).sort("_len", "trace_id", nulls_last=True).select(
            "problem_id", pl.col("trace_id").alias("_pos"),
            pl.int_range(pl.len()).over("problem_id").alias("_k"), pl.len().over("problem_id").alias("_of"))
        candidates = (frame.with_row_index("_r").filter(wrong).sort("_len", "trace_id", nulls_last=True)
                      .with_columns(pl.int_range(pl.len()).over("problem_id").alias("_j"))
                      .filter(pl.col("_j") < policy.negatives.max_per_problem))
        # round-robin over the problem's kept traces: negative j pairs with positive j mod kept
        paired = (candidates.join(kept.select("problem_id", "_of").unique("problem_id"), on="problem_id")
                  .with_columns((pl.col("_j") % pl.col("_of")).alias("_k"))
                  .join(kept.select("problem_id", "_k", "_pos"), on=["problem_id", "_k"]))
        out = pl.DataFrame({"_r": np.arange(frame.height, dtype=np.uint32)}).join(
            paired.select("_r", "_pos"), on="_r", how="left", maintain_order="left")
        return out["_pos"].alias(_NEGATIVE)

    def summarize(self, counts: Counter) -> dict:
        names = self.policy.rule_names()
        total = counts.get("select:in", 0)
        if not total and hasattr(self, "_funnel"):
            return {"funnel": [{"rule": r, "rows_left": n} for r, n in self._funnel]}
        funnel, left = [{"rule": "input", "rows_left": total}], total
        for name in names:
            dropped = counts.get(f"drop:{name}", 0)
            left -= dropped
            funnel.append({"rule": name, "dropped": dropped, "rows_left": left})
        return {"funnel": funnel, "kept": counts.get("kept", 0), "negatives": counts.get("negatives", 0)}

    # -- process: join the decisions ------------------------------------------------------------
    def process(self, batch: pa.Table) -> BatchResult:
        state = pl.from_arrow(self.state)
        joined = pl.from_arrow(batch).join(state, on="trace_id", how="left", maintain_order="left")
        dropped = self.col("dropped_by")
        counts: Counter[str] = Counter({f"drop:{r}": n for r, n in
                                        joined.filter(pl.col(dropped).is_not_null()).group_by(dropped).len().rows()})
        keep = joined.filter(pl.col(dropped).is_null()).drop(dropped, _NEGATIVE)
        negatives = joined.filter(pl.col(_NEGATIVE).is_not_null()).drop(dropped)
        counts.update({"select:in": joined.height, "kept": keep.height, "negatives": negatives.height})
        sides = {"negatives": negatives.to_arrow()} if negatives.height else {}
        return BatchResult(keep.to_arrow(), counts=counts, side_outputs=sides)


def _where(rule: pol.Where) -> pl.Expr:
    col = pl.col(rule.column)
    expr = pl.lit(True)
    if rule.min is not None:
        expr = expr & (col >= rule.min)
    if rule.max is not None:
        expr = expr & (col <= rule.max)
    if rule.equals is not None:
        expr = expr & (col == rule.equals)
    if rule.isin is not None:
        expr = expr & col.is_in(rule.isin)
    if rule.not_null:
        expr = expr & col.is_not_null()
    # a null value fails a condition on it
    return expr.fill_null(False)


def _diverse(frame: pl.DataFrame, alive: pl.Series, rule: pol.PerProblem) -> pl.Series:
    """Per problem, the most diverse `max` traces: start from the shortest, then repeatedly add the
    trace farthest (cosine) from those already chosen. Only problems over the cap are embedded."""
    from curate.filters.embeddings import embed_texts

    rows = frame.with_row_index("_r").filter(alive).with_columns(pl.len().over("problem_id").alias("_n"))
    keep = np.ones(frame.height, np.bool_)
    over = rows.filter(pl.col("_n") > rule.max).sort("problem_id", "_len", "trace_id", nulls_last=True)
    if not over.height:
        return pl.Series(keep)
    vectors = embed_texts(over[rule.field].fill_null("").to_list(), model=rule.model)
    keep[over["_r"].to_numpy()] = False
    ids = over["_r"].to_numpy()
    starts = np.flatnonzero(np.r_[True, over["problem_id"].to_numpy()[1:] != over["problem_id"].to_numpy()[:-1]])
    bounds = np.r_[starts, over.height]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # per problem (not per row): a few traces each
        group = vectors[lo:hi]
        chosen = [0]
        nearest = 1 - group @ group[0]
        while len(chosen) < rule.max:
            nearest[chosen] = -np.inf
            pick = int(np.argmax(nearest))
            chosen.append(pick)
            nearest = np.minimum(nearest, 1 - group @ group[pick])
        keep[ids[lo + np.array(chosen)]] = True
    return pl.Series(keep)


def _budget(frame: pl.DataFrame, rule: pol.Budget) -> pl.Series:
    """`rule.problems` problem ids: round-robin across strata (spread columns, embedding clusters),
    within a stratum preferred difficulty first, then quality, then a seeded hash (reproducible)."""
    cols = frame.columns
    aggs = [pl.col(c).drop_nulls().first().alias(c) for c in rule.spread]
    if "difficulty__bucket" in cols:
        aggs.append(pl.col("difficulty__bucket").drop_nulls().first().alias("_bucket"))
    if rule.quality:
        aggs.append(pl.col(rule.quality).max().alias("_quality"))
    if rule.clusters:
        aggs.append(pl.col("prompt").first().alias("_prompt"))
    # Sorted: group_by's order varies run to run, and k-means seeds its centroids by row position.
    problems = (frame.group_by("problem_id").agg(aggs) if aggs else frame.select("problem_id").unique()).sort(
        "problem_id")
    prefer = {b: i for i, b in enumerate(rule.prefer)}
    problems = problems.with_columns(
        (pl.col("_bucket") if "_bucket" in problems.columns else pl.lit("unknown"))
        .fill_null("unknown").replace_strict(prefer, default=len(prefer)).alias("_pref"),
        (pl.col("_quality") if "_quality" in problems.columns else pl.lit(0.0)).cast(pl.Float64).fill_null(
            float("-inf")).alias("_q"),
        pl.col("problem_id").hash(seed=rule.seed).alias("_tie"))
    strata = [c for c in rule.spread]
    if rule.clusters:
        problems = problems.with_columns(pl.Series("_cluster", _kmeans(problems["_prompt"], rule)))
        strata.append("_cluster")
    ordered = problems.sort("_pref", "_q", "_tie", descending=[False, True, False])
    if strata:
        ordered = ordered.with_columns(pl.int_range(pl.len()).over(strata).alias("_in_stratum")).sort(
            "_in_stratum", "_pref", "_q", "_tie", descending=[False, False, True, False])
    return ordered.head(rule.problems)["problem_id"]


def _kmeans(prompts: pl.Series, rule: pol.Budget) -> np.ndarray:
    import faiss

    from curate.filters.embeddings import embed_texts

    vectors = embed_texts(prompts.fill_null("").to_list(), model=rule.model)
    k = min(rule.clusters or 2, len(vectors))
    if k < 2:
        return np.zeros(len(vectors), np.int64)
    # nredo: keep the best of a few seeded starts, so one unlucky start cannot split a topic
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, nredo=3, seed=rule.seed, spherical=True)
    kmeans.train(vectors)
    return kmeans.index.search(vectors, 1)[1][:, 0].astype(np.int64)


def read_funnel(step_dir: str | Path) -> pl.DataFrame:
    """The funnel of a finished select step: rule, dropped, rows_left (from its decision table)."""
    import json

    step_dir = Path(step_dir)
    manifest = json.loads((step_dir / "_manifest.json").read_text())
    return pl.DataFrame(manifest["summary"]["funnel"])
