"""The selection policy: a YAML list of rules applied in order over score columns.

```yaml
rules:                                   # each drops rows; the funnel counts rows left after each
  - verified                             # math__verdict == correct or code__verdict == pass
  - format_ok                            # format__ok
  - not_contaminated                     # decon__benchmark is null ({fields, methods, min_score} narrow it)
  - survivors: [exact, minhash, semantic]   # keep exact__is_first / minhash__is_survivor / semantic__is_survivor
  - drop_solved_by_all: {min_teachers: 2}   # problems every teacher solves teach little
  - drop_buckets: [trivial, unknown]     # difficulty__bucket values
  - where: {column: format__ngram_repeat, max: 0.3}   # any column: min, max, equals, in, not_null
  - length_budget: {tokens: {easy: 4096, medium: 8192, hard: 16384}}   # DAP-style, by difficulty bucket
  - per_problem: {max: 4, pick: shortest}   # or pick: diverse (embedding distance)
  - budget: {problems: 1000, prefer: [hard, medium, easy], spread: [domain]}   # s1K/LIMO-style subset
negatives: {max_per_problem: 2, require: [format_ok]}   # wrong traces paired with kept ones (REDI)
length: auto                             # auto (completion_tokens, else format__tokens) or a column name
```

A rule is a bare name or a one-key mapping; `name:` inside a mapping renames it in the funnel.
`Policy.columns(rule)` says which columns a rule reads, so a policy naming a column the run lacks
fails before any work, naming the rule and the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curate.filters.verdicts import VERIFIED

DUP_COLUMNS = {"exact": "exact__is_first", "minhash": "minhash__is_survivor", "semantic": "semantic__is_survivor"}
LENGTH_COLUMNS = ("completion_tokens", "format__tokens")


class PolicyError(ValueError):
    pass


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None


class Verified(_Rule):
    kind: Literal["verified"] = "verified"


class FormatOk(_Rule):
    kind: Literal["format_ok"] = "format_ok"


class NotContaminated(_Rule):
    kind: Literal["not_contaminated"] = "not_contaminated"
    fields: list[str] | None = Field(None, description="Only hits in these fields count (prompt, reasoning, answer).")
    methods: list[str] | None = Field(None, description="Only hits by these methods count.")
    min_score: float = Field(0.0, description="Only hits with at least this score count.")


class Survivors(_Rule):
    kind: Literal["survivors"] = "survivors"
    methods: list[Literal["exact", "minhash", "semantic"]] = ["exact", "minhash", "semantic"]


class DropSolvedByAll(_Rule):
    kind: Literal["drop_solved_by_all"] = "drop_solved_by_all"
    min_teachers: int = Field(2, ge=1, description="Only problems checked by at least this many teachers.")


class DropBuckets(_Rule):
    kind: Literal["drop_buckets"] = "drop_buckets"
    buckets: list[Literal["unknown", "unsolved", "hard", "medium", "easy", "trivial"]]


class Where(_Rule):
    kind: Literal["where"] = "where"
    column: str
    min: float | None = None
    max: float | None = None
    equals: Any = None
    isin: list[Any] | None = Field(None, alias="in")
    not_null: bool = False

    @model_validator(mode="after")
    def _some_condition(self) -> Where:
        if self.min is None and self.max is None and self.equals is None and self.isin is None and not self.not_null:
            raise ValueError(f"where on {self.column}: give min, max, equals, in or not_null")
        return self


class LengthBudget(_Rule):
    kind: Literal["length_budget"] = "length_budget"
    tokens: dict[str, int] = Field(description="difficulty bucket -> most tokens a trace may have")
    default: int | None = Field(None, description="Budget for buckets not listed (none: no limit).")


class PerProblem(_Rule):
    kind: Literal["per_problem"] = "per_problem"
    max: int = Field(ge=1)
    pick: Literal["shortest", "diverse"] = "shortest"
    model: str = Field("all-MiniLM-L6-v2", description="Embedding model for pick: diverse.")
    field: Literal["reasoning", "answer"] = "reasoning"


class Budget(_Rule):
    kind: Literal["budget"] = "budget"
    problems: int = Field(ge=1)
    prefer: list[str] = Field(["hard", "medium", "easy", "unsolved", "trivial", "unknown"],
                              description="Difficulty buckets in order of preference.")
    spread: list[str] = Field(["domain"], description="Columns whose values the subset is spread across "
                              "(round-robin), e.g. domain, semantic__cluster_id.")
    clusters: int | None = Field(None, ge=2, description="Also spread across this many k-means clusters of "
                                 "prompt embeddings.")
    model: str = "all-MiniLM-L6-v2"
    quality: str | None = Field(None, description="A column; higher values are picked first within a stratum.")
    seed: int = 0


Rule = Annotated[Verified | FormatOk | NotContaminated | Survivors | DropSolvedByAll | DropBuckets | Where
                 | LengthBudget | PerProblem | Budget, Field(discriminator="kind")]
# which option a bare list or scalar value fills: `survivors: [exact]`, `drop_buckets: [trivial]`
_POSITIONAL = {"survivors": "methods", "drop_buckets": "buckets", "per_problem": "max", "budget": "problems"}


class Negatives(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_per_problem: int = Field(2, ge=1)
    require: list[Literal["format_ok", "not_contaminated"]] = ["format_ok"]


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[Rule]
    negatives: Negatives | None = None
    length: str = Field("auto", description="auto (completion_tokens, else format__tokens) or a column.")

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        rules = []
        for i, item in enumerate(data.get("rules") or []):
            if isinstance(item, str):
                rules.append({"kind": item})
            elif isinstance(item, dict) and len(item) == 1 and "kind" not in item:
                (kind, options), = item.items()
                if options is None:
                    options = {}
                elif not isinstance(options, dict):
                    options = {_POSITIONAL.get(kind, "value"): options}
                rules.append({"kind": kind, **options})
            elif isinstance(item, dict):
                rules.append(item)
            else:
                raise ValueError(f"rule {i + 1}: expected a name or a one-key mapping, got {item!r}")
        data["rules"] = rules
        if data.get("negatives") is True:
            data["negatives"] = {}
        elif data.get("negatives") is False:
            data["negatives"] = None
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        names = self.rule_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique in the funnel: {duplicates} (add `name:` to a rule)")
        return self

    def rule_names(self) -> list[str]:
        return [rule_name(r) for r in self.rules]


def rule_name(rule: _Rule) -> str:
    if rule.name:
        return rule.name
    if isinstance(rule, Where):
        return f"where:{rule.column}"
    return rule.kind  # type: ignore[attr-defined]


def length_columns(policy: Policy, present: list[str]) -> list[str]:
    if policy.length != "auto":
        return [policy.length]
    return [c for c in LENGTH_COLUMNS if c in present] or list(LENGTH_COLUMNS[:1])


def rule_columns(rule: _Rule, policy: Policy, present: list[str]) -> list[str]:
    """Columns a rule reads (all must exist; for `verified`, at least one verdict column)."""
    if isinstance(rule, Verified):
        return [next((c for c in VERIFIED if c in present), "math__verdict")]
    if isinstance(rule, FormatOk):
        return ["format__ok"]
    if isinstance(rule, NotContaminated):
        return ["decon__benchmark", *(["decon__field"] if rule.fields else []),
                *(["decon__method"] if rule.methods else []), *(["decon__score"] if rule.min_score else [])]
    if isinstance(rule, Survivors):
        return [DUP_COLUMNS[m] for m in rule.methods]
    if isinstance(rule, DropSolvedByAll):
        return ["difficulty__solved_by", "difficulty__teachers"]
    if isinstance(rule, DropBuckets):
        return ["difficulty__bucket"]
    if isinstance(rule, Where):
        return [rule.column]
    if isinstance(rule, LengthBudget):
        return ["difficulty__bucket", *length_columns(policy, present)]
    if isinstance(rule, PerProblem):
        return length_columns(policy, present) + ([rule.field] if rule.pick == "diverse" else [])
    if isinstance(rule, Budget):
        return ([*rule.spread, *([rule.quality] if rule.quality else []),
                 *(["prompt"] if rule.clusters else [])])
    return []


def all_columns(policy: Policy) -> list[str]:
    """Every column any rule of the policy may read (what select's fit asks the runner for)."""
    cols = ["teacher", "domain", *VERIFIED, "format__ok", *LENGTH_COLUMNS, "difficulty__bucket"]
    for rule in policy.rules:
        cols += rule_columns(rule, policy, list(LENGTH_COLUMNS))
    if policy.negatives and "not_contaminated" in policy.negatives.require:
        cols.append("decon__benchmark")
    return list(dict.fromkeys(cols))


def check_columns(policy: Policy, present: list[str]) -> None:
    """Raise PolicyError naming the first rule that reads a column the run lacks."""
    for rule in policy.rules:
        if isinstance(rule, Verified) and not any(c in present for c in VERIFIED):
            raise PolicyError(f"rule {rule_name(rule)} needs a verdict column ({' or '.join(VERIFIED)}), which this "
                              "run does not have: run a verifier first, or remove the rule")
        missing = [c for c in rule_columns(rule, policy, present) if c not in present]
        if missing:
            raise PolicyError(f"rule {rule_name(rule)} needs column {', '.join(missing)}, which this run does not "
                              "have: run the stage that writes it, or remove the rule")
    if policy.negatives:
        needed = {"format_ok": "format__ok", "not_contaminated": "decon__benchmark"}
        for req in policy.negatives.require:
            if needed[req] not in present:
                raise PolicyError(f"negatives: require {req} needs column {needed[req]}, which this run does not have")


def load_policy(spec: str | dict | Path) -> Policy:
    """A policy from a YAML file path or an inline mapping; errors name the file and the rule."""
    source = "inline policy"
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.exists():
            raise PolicyError(f"policy file {path} does not exist")
        source = str(path)
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Policy.model_validate(spec)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = ".".join(str(p) for p in loc)
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                where = f"rule {loc[1] + 1}" + (f" ({loc[2]})" if len(loc) > 2 else "") + (
                    "." + ".".join(str(p) for p in loc[3:]) if len(loc) > 3 else "")
            lines.append(f"{where}: {err['msg']}")
        raise PolicyError(f"{source}: invalid policy:\n  " + "\n  ".join(lines)) from None
