"""`curate select --policy FILE`: apply a declarative policy over the score columns.

The only stage that drops rows. It is global over the score columns alone, so changing a
threshold and re-selecting takes seconds. Rules apply in a fixed order and the funnel (rows left
after each rule) goes to the manifest. A policy that needs a column the run lacks is an error
naming the rule and the column, before anything is written.

```yaml
require_verified: true          # math__verdict == correct or code__verdict == pass
require_format_ok: true         # format__ok
drop_contaminated: true         # decon__benchmark is null
drop_duplicates: [exact, minhash, semantic]   # keep exact__is_first / *__is_survivor
drop_difficulty: [trivial]      # difficulty__bucket values to drop (problems every teacher solves)
max_per_problem: 2              # shortest verified traces first
max_problems: 1000              # budget: hard before medium before easy, spread over clusters and domains
negatives: true                 # side output: wrong traces of kept problems, paired with a kept one
```
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field

from curate.filters.verdicts import VERIFIED, checked_expr, verified_expr
from curate.stage import BatchResult, Stage, StageConfig

_DUP_COLUMNS = {"exact": "exact__is_first", "minhash": "minhash__is_survivor", "semantic": "semantic__is_survivor"}
_BUCKET_PRIORITY = {"hard": 0, "medium": 1, "easy": 2, "unsolved": 3, "trivial": 4, "unknown": 5}


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_verified: bool = True
    require_format_ok: bool = False
    drop_contaminated: bool = False
    drop_duplicates: list[Literal["exact", "minhash", "semantic"]] = []
    drop_difficulty: list[str] = []
    max_per_problem: int | None = Field(None, ge=1)
    max_problems: int | None = Field(None, ge=1)
    negatives: bool = True


class SelectConfig(StageConfig):
    policy: str | dict = Field("pipelines/policies/default.yaml", description="Policy YAML path, or the policy inline.")

    def load(self) -> Policy:
        if isinstance(self.policy, dict):
            return Policy.model_validate(self.policy)
        path = Path(self.policy)
        if not path.exists():
            raise FileNotFoundError(f"policy file {path} does not exist")
        return Policy.model_validate(yaml.safe_load(path.read_text()) or {})

    def model_post_init(self, _ctx) -> None:
        if isinstance(self.policy, dict):
            Policy.model_validate(self.policy)


class PolicyError(ValueError):
    pass


class SelectStage(Stage[SelectConfig]):
    name = "select"
    version = "1"
    config_model = SelectConfig
    description = "Apply a selection policy over the score columns: the curated set, a funnel, and negatives."
    example = "curate select runs/demo --policy pipelines/policies/default.yaml"
    cli = ("select",)
    requires = ("trace_id", "problem_id")
    fit_columns = ("trace_id", "problem_id", "teacher", "domain", "reasoning", "answer")
    fit_optional_columns = (*VERIFIED, "format__ok", "decon__benchmark", *_DUP_COLUMNS.values(),
                            "difficulty__bucket", "semantic__cluster_id")
    score_namespace = "select"

    def fingerprint(self) -> dict:
        # a policy file's content, not its path, decides whether selection must re-run
        fp = super().fingerprint()
        fp["policy"] = self.config.load().model_dump(mode="json")
        return fp

    def _rules(self, policy: Policy, columns: list[str]) -> list[tuple[str, pl.Expr | None, list[str]]]:
        """(rule, keep expression or None for the ranking rules, columns it needs)."""
        rules: list[tuple[str, pl.Expr | None, list[str]]] = []
        if policy.require_verified:
            if not any(c in columns for c in VERIFIED):
                raise PolicyError("rule require_verified needs math__verdict or code__verdict; run a verifier first")
            rules.append(("require_verified", verified_expr(columns), []))
        if policy.require_format_ok:
            rules.append(("require_format_ok", pl.col("format__ok").fill_null(False), ["format__ok"]))
        if policy.drop_contaminated:
            rules.append(("drop_contaminated", pl.col("decon__benchmark").is_null(), ["decon__benchmark"]))
        for kind in policy.drop_duplicates:
            col = _DUP_COLUMNS[kind]
            rules.append((f"drop_duplicates:{kind}", pl.col(col).fill_null(True), [col]))
        if policy.drop_difficulty:
            rules.append(("drop_difficulty", ~pl.col("difficulty__bucket").is_in(policy.drop_difficulty),
                          ["difficulty__bucket"]))
        if policy.max_per_problem:
            rules.append(("max_per_problem", None, []))
        if policy.max_problems:
            rules.append(("max_problems", None, []))
        for rule, _expr, needed in rules:
            missing = [c for c in needed if c not in columns]
            if missing:
                raise PolicyError(f"rule {rule} needs column {', '.join(missing)}, which this run does not have "
                                  f"(run the stage that writes it, or remove the rule)")
        return rules

    def fit(self, batches) -> pa.Table:
        policy = self.config.load()
        frame = pl.concat([pl.from_arrow(pa.Table.from_batches([b])) for b in batches], how="diagonal_relaxed")
        columns = frame.columns
        rules = self._rules(policy, columns)
        frame = frame.with_columns(
            (pl.col("reasoning").fill_null("").str.len_chars() + pl.col("answer").fill_null("").str.len_chars())
            .alias("_len"),
            pl.lit(None, pl.Utf8).alias("_dropped_by"),
        )
        funnel = [("input", frame.height)]
        for rule, expr, _ in rules:
            alive = pl.col("_dropped_by").is_null()
            if rule == "max_per_problem":
                rank = pl.col("_len").rank("ordinal").over("problem_id", pl.col("_dropped_by").is_null())
                expr = rank <= policy.max_per_problem
            elif rule == "max_problems":
                expr = pl.col("problem_id").is_in(self._budget(frame.filter(alive), policy.max_problems).implode())
            frame = frame.with_columns(
                pl.when(alive & ~expr.fill_null(False)).then(pl.lit(rule)).otherwise(pl.col("_dropped_by"))
                .alias("_dropped_by"))
            funnel.append((rule, frame.filter(pl.col("_dropped_by").is_null()).height))
        kept = frame.filter(pl.col("_dropped_by").is_null())
        negatives = pl.lit(None, pl.Utf8)
        if policy.negatives and any(c in columns for c in VERIFIED):
            positive = kept.sort("_len").group_by("problem_id").agg(pl.col("trace_id").first().alias("_pos"))
            frame = frame.join(positive, on="problem_id", how="left")
            negatives = pl.when(checked_expr(columns) & ~verified_expr(columns)).then(pl.col("_pos"))
        self._funnel = funnel
        return frame.select(
            "trace_id",
            pl.col("_dropped_by").alias(self.col("dropped_by")),
            negatives.alias(self.col("positive_trace_id")),
        ).to_arrow()

    @staticmethod
    def _budget(frame: pl.DataFrame, n: int) -> pl.Series:
        """n problems: harder buckets first, then round-robin over semantic clusters and domains."""
        problems = frame.group_by("problem_id").agg(
            pl.col("domain").first(),
            (pl.col("difficulty__bucket").first() if "difficulty__bucket" in frame.columns else pl.lit("unknown"))
            .alias("bucket"),
            (pl.col("semantic__cluster_id").first() if "semantic__cluster_id" in frame.columns
             else pl.col("problem_id").first()).alias("cluster"),
        )
        ranked = problems.with_columns(
            pl.col("bucket").replace_strict(_BUCKET_PRIORITY, default=9).alias("_b"),
            pl.col("problem_id").rank("ordinal").over("cluster").alias("_in_cluster"),
            pl.col("problem_id").rank("ordinal").over("domain").alias("_in_domain"),
        ).sort("_in_cluster", "_b", "_in_domain", "problem_id")
        return ranked.head(n)["problem_id"]

    def summarize(self, counts: Counter) -> dict:
        funnel = getattr(self, "_funnel", [])
        return {"funnel": [{"rule": r, "rows_left": n} for r, n in funnel]}

    def process(self, batch: pa.Table) -> BatchResult:
        joined = pl.from_arrow(batch).join(pl.from_arrow(self.state), on="trace_id", how="left", maintain_order="left")
        dropped = self.col("dropped_by")
        counts = Counter(f"drop:{r}" for r in joined[dropped].drop_nulls().to_list())
        keep = joined.filter(pl.col(dropped).is_null()).drop(dropped, self.col("positive_trace_id"))
        sides = {}
        negatives = joined.filter(pl.col(self.col("positive_trace_id")).is_not_null()).drop(dropped)
        if negatives.height:
            sides["negatives"] = negatives.to_arrow()
        counts["kept"] = keep.height
        counts["negatives"] = negatives.height
        return BatchResult(keep.to_arrow(), counts=counts, side_outputs=sides)
