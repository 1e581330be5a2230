"""The story of a run as a list of sections (text, tables, plots, code), formatted once and
rendered by both templates: the Markdown card and the HTML report say the same thing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from curate.cards import fmt
from curate.cards.facts import BUCKET_ORDER, Facts
from curate.cards.metadata import config_path, license_summary
from curate.cards.plots import PLOTS


@dataclass
class Block:
    kind: str  # text | table | plot | code | list
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)  # right-aligned columns
    items: list[str] = field(default_factory=list)
    name: str = ""  # plot name, code language


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, text: str) -> Section:
        self.blocks.append(Block("text", text=text))
        return self

    def table(self, columns: list[str], rows: list[list[Any]], numeric: list[bool] | None = None) -> Section:
        self.blocks.append(Block("table", columns=columns, rows=[[str(c) for c in r] for r in rows],
                                 numeric=numeric or [False] * len(columns)))
        return self

    def plot(self, name: str, plots: set[str]) -> Section:
        if name in plots:
            self.blocks.append(Block("plot", name=name, text=PLOTS[name][0]))
        return self

    def code(self, language: str, text: str, title: str = "") -> Section:
        self.blocks.append(Block("code", name=language, text=text.rstrip("\n"), items=[title] if title else []))
        return self

    def bullets(self, items: list[str]) -> Section:
        self.blocks.append(Block("list", items=items))
        return self


# -- one builder per section -----------------------------------------------------------------
def summary(facts: Facts) -> Section:
    over = facts["overview"]
    lic = license_summary(facts)
    sec = Section("summary", "Summary")
    parts = [f"**{fmt.num(over['curated_rows'])}** curated traces"]
    if over["problems"] is not None:
        parts.append(f"of **{fmt.num(over['problems'])}** problems")
    if over["teachers"] is not None:
        parts.append(f"from **{fmt.num(over['teachers'])}** teachers")
    domains = f" ({', '.join(over['domains'])})" if over["domains"] else ""
    sec.text(" ".join(parts) + domains + f", selected from **{fmt.num(over['scored_rows'])}** scored traces "
             f"(step `{over['scored_step']}`; curated set: step `{over['curated_step']}`).")
    rows = [[name, "train", fmt.num(n), f"`{config_path(name)}`"] for name, n in over["configs"].items()]
    sec.table(["config", "split", "rows", "files"], rows, [False, False, True, False])
    sec.text(_license_text(lic))
    if lic["non_commercial"]:
        sec.text(f"**Non-commercial:** rows under {', '.join(f'`{x}`' for x in lic['non_commercial'])} "
                 "may not be used commercially; filter on the `license` column to keep only permissive rows.")
    return sec


def _license_text(lic: dict) -> str:
    if lic["license"] != "other":
        return f"Licence: `{lic['license']}`, inherited from every source."
    return ("Licence: `other`; the sources differ and every row keeps its source's licence in the `license` "
            f"column: {', '.join(f'`{x}`' for x in lic['licenses'])}.")


def sources(facts: Facts) -> Section:
    sec = Section("sources", "Sources and licences")
    rows = facts["sources"] or []
    if rows:
        sec.table(["source", "licence", "domain", "problems", "traces (scored)", "curated problems", "curated traces"],
                  [[r["source"], r["license"], r["domains"] or fmt.DASH, fmt.num(r["problems"]), fmt.num(r["traces"]),
                    fmt.num(r["curated_problems"]), fmt.num(r["curated_traces"])] for r in rows],
                  [False, False, False, True, True, True, True])
    sec.text("Rows per licence over every published config:")
    sec.table(["licence", "rows"], [[r["license"], fmt.num(r["rows"])] for r in facts["licenses"]], [False, True])
    return sec


def teachers(facts: Facts) -> Section | None:
    rows = facts["teachers"]
    if not rows:
        return None
    curated = facts["overview"]["curated_rows"]
    sec = Section("teachers", "Teachers")
    sec.text("Traces per teacher before selection, what each contributed to the curated set, and the sampling "
             "parameters recorded with its traces (most used first; per-trace seeds left out).")
    sec.table(["teacher", "backend", "sampling params", "traces (scored)", "curated", "share of curated"],
              [[r["teacher"], r["backends"] or fmt.DASH, _params(r["sampling_params"], r["sampling_params_distinct"]),
                fmt.num(r["traces"]),
                fmt.num(r["curated"]), fmt.share(r["curated"], curated)] for r in rows],
              [False, False, False, True, True, True])
    return sec


def _params(values: list[str], distinct: int) -> str:
    """The most common sampling settings of a teacher (most traces first)."""
    if not values:
        return "not recorded"
    more = f" (+{distinct - len(values)} more)" if distinct > len(values) else ""
    return "; ".join(_compact_json(v) for v in values) + more


def _compact_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return text


def funnel(facts: Facts, plots: set[str]) -> Section:
    fun = facts["funnel"]
    sec = Section("funnel", "Funnel")
    sec.text("Rows into and out of every step. Verifiers and filters only add score columns; `rejected` rows were "
             "malformed input, `removed` rows were dropped by selection.")
    sec.table(["step", "stage", "rows in", "rows out", "rejected", "removed"],
              [[s["step"], s["stage"], fmt.num(s["rows_in"]), fmt.num(s["rows_out"]), fmt.num(s["rejected"]),
                fmt.num(s["removed"])] for s in fun["steps"]],
              [False, False, True, True, True, True])
    if fun["rejects"]:
        sec.text("Rejected rows by reason (most frequent first):")
        sec.table(["step", "field", "reason", "rows"],
                  [[r["step"], r["field"] or fmt.DASH, r["reason"], fmt.num(r["rows"])] for r in fun["rejects"]],
                  [False, False, False, True])
    rules = fun["rules"]
    if rules:
        sec.text(f"Selection rules in the order they apply, from {fmt.num(rules['input'])} scored traces:")
        sec.table(["rule", "rows removed", "rows left"],
                  [[r["rule"], fmt.num(r["dropped"]), fmt.num(r["rows_left"])] for r in rules["rules"]],
                  [False, True, True])
        if rules["per_teacher"]:
            sec.text("Outcome per teacher (rows removed by each rule, and kept):")
            names = [r["rule"] for r in rules["rules"]]
            table: dict[str, dict[str, int]] = {}
            for r in rules["per_teacher"]:
                table.setdefault(r["teacher"], {})[r["outcome"]] = r["rows"]
            sec.table(["teacher", "traces", *names, "kept"],
                      [[t, fmt.num(sum(o.values())), *[fmt.num(o.get(n, 0)) for n in names], fmt.num(o.get("kept", 0))]
                       for t, o in table.items()],
                      [False] + [True] * (len(names) + 2))
    sec.plot("funnel", plots)
    return sec


def verification(facts: Facts, plots: set[str]) -> Section | None:
    ver = facts["verification"]
    if not ver:
        return None
    sec = Section("verification", "Verification")
    sec.text(f"Verdict columns: {', '.join(f'`{c}`' for c in ver['columns'])}. Pass rate = verified / traces; "
             "checked = traces with a real verdict (not `no_reference`, `no_tests`, `sandbox_error`, `no_code`).")
    sec.table(["teacher", "domain", "traces", "checked", "verified", "pass rate", "pass rate (checked)"],
              [[r["teacher"], r["domain"], fmt.num(r["traces"]), fmt.num(r["checked"]), fmt.num(r["verified"]),
                fmt.pct(r["pass_rate"]), fmt.pct(r["pass_rate_checked"])] for r in ver["by_group"]],
              [False, False, True, True, True, True, True])
    sec.text("Verdicts:")
    sec.table(["column", "verdict", "traces"], [[r["column"], r["verdict"], fmt.num(r["rows"])] for r in ver["verdicts"]],
              [False, False, True])
    if not facts["difficulty"]:
        sec.plot("pass_rate", plots)
    return sec


def format_checks(facts: Facts) -> Section | None:
    rows = facts["format"]
    if not rows:
        return None
    sec = Section("format", "Format checks")
    sec.text("Boolean format columns over all scored traces (`format__ok` is the overall verdict).")
    sec.table(["column", "true", "false", "null"],
              [[r["column"], fmt.num(r["yes"]), fmt.num(r["no"]), fmt.num(r["unknown"])] for r in rows],
              [False, True, True, True])
    return sec


def dedup(facts: Facts) -> Section | None:
    rows = facts["dedup"]
    if not rows:
        return None
    sec = Section("dedup", "Deduplication")
    sec.text("Clusters of more than one item over all scored traces, counted in the unit each method compares "
             "(traces, or problems for prompt-level methods); duplicates are the items not chosen as their "
             "cluster's survivor (selection drops them when the policy says so).")
    sec.table(["method", "cluster column", "unit", "clusters (size > 1)", "items in clusters", "largest cluster",
               "duplicates"],
              [[r["method"], r["cluster_column"], r["unit"], fmt.num(r["clusters"]), fmt.num(r["in_clusters"]),
                fmt.num(r["largest"]), fmt.num(r["duplicates"])] for r in rows],
              [False, False, False, True, True, True, True])
    return sec


def contamination(facts: Facts, plots: set[str]) -> Section | None:
    con = facts["contamination"]
    if con is None:
        return None
    sec = Section("contamination", "Contamination")
    checked = ", ".join(f"`{b}`" for b in con["checked"]) or "none recorded"
    sec.text(f"Benchmarks checked: {checked}. {fmt.num(con['total']['traces'])} scored traces "
             f"({fmt.num(con['total']['problems'])} problems) overlap a benchmark item.")
    if con["hits"]:
        sec.table(["benchmark", "traces flagged", "problems flagged", "methods", "in curated set"],
                  [[r["benchmark"], fmt.num(r["traces"]), fmt.num(r["problems"]), r["methods"] or fmt.DASH,
                    fmt.num(r["curated_traces"])] for r in con["hits"]],
                  [False, True, True, False, True])
        sec.text("Examples (highest overlap first):")
        sec.table(["benchmark", "problem", "benchmark item", "score", "method", "prompt (start)"],
                  [[r["benchmark"], r["problem_id"] or fmt.DASH, r["item_id"] or fmt.DASH, fmt.score(r["score"]),
                    r["method"] or fmt.DASH, r["excerpt"] or ""] for r in con["examples"]],
                  [False, False, False, True, False, False])
    sec.plot("contamination", plots)
    return sec


def difficulty(facts: Facts, plots: set[str]) -> Section | None:
    diff = facts["difficulty"]
    if not diff:
        return None
    sec = Section("difficulty", "Difficulty")
    sec.text("Problems per difficulty bucket (from the share of teachers that solve each problem), with the mean "
             "problem pass rate.")
    sec.table(["bucket", "problems", "traces (scored)", "mean pass rate", "curated traces"],
              [[b["bucket"], fmt.num(b["problems"]), fmt.num(b["traces"]), fmt.pct(b["mean_pass_rate"]),
                fmt.num(b["curated_traces"])] for b in diff["buckets"]],
              [False, True, True, True, True])
    if diff["by_teacher"]:
        present = {r["bucket"] for r in diff["by_teacher"]}
        buckets = [b for b in BUCKET_ORDER if b in present] + sorted(present - set(BUCKET_ORDER))
        grid: dict[str, dict[str, dict]] = {}
        for r in diff["by_teacher"]:
            grid.setdefault(r["teacher"], {})[r["bucket"]] = r
        sec.text("Pass rate per teacher and bucket (traces in parentheses):")
        sec.table(["teacher", *buckets],
                  [[t, *[f"{fmt.pct(cells[b]['pass_rate'])} ({fmt.num(cells[b]['traces'])})" if b in cells else fmt.DASH
                         for b in buckets]] for t, cells in grid.items()],
                  [False] + [True] * len(buckets))
    sec.plot("pass_rate", plots)
    return sec


def token_lengths(facts: Facts, plots: set[str]) -> Section | None:
    tok = facts["tokens"]
    if not tok:
        return None
    sec = Section("tokens", "Token lengths")
    sec.text(f"Per trace in the curated set: {tok['measure']}.")
    rows = [*tok["per_teacher"], tok["overall"]]
    sec.table(["teacher", "traces", "mean", "median", "p90", "max", "total"],
              [[r["teacher"], fmt.num(r["traces"]), fmt.tokens(r["mean"]), fmt.tokens(r["median"]),
                fmt.tokens(r["p90"]), fmt.num(r["max"]), fmt.num(r["total"])] for r in rows],
              [False] + [True] * 6)
    sec.plot("token_lengths", plots)
    return sec


def reproduce(facts: Facts) -> Section:
    pipe = facts["pipeline"]
    over = facts["overview"]
    sec = Section("reproduce", "Reproduce")
    versions = ", ".join(over["run_package_versions"])
    sec.text(f"Made with trace-curate {versions} (card written by {over['package_version']}). Each step's "
             "resolved config and its hash are recorded in its `_manifest.json`.")
    if pipe["yaml"]:
        sec.code("bash", f"pip install 'trace-curate=={over['run_package_versions'][-1]}'\n"
                         "curate run pipeline.yaml --out runs/" + over["name"])
        sec.code("yaml", pipe["yaml"], "pipeline.yaml")
    for policy in pipe["policies"]:
        sec.code("yaml", policy["text"], f"selection policy of {policy['step']} ({policy['path']})")
    sec.table(["step", "stage", "stage version", "config hash"],
              [[s["step"], s["stage"], s["version"], f"`{s['config_hash']}`"] for s in pipe["steps"]])
    configs = {s["step"]: s["config"] for s in pipe["steps"]}
    sec.code("json", json.dumps(configs, indent=2, sort_keys=True, default=str), "resolved step configs")
    return sec


def build_sections(facts: Facts, plots: set[str]) -> list[Section]:
    built = [
        summary(facts),
        sources(facts),
        teachers(facts),
        funnel(facts, plots),
        verification(facts, plots),
        format_checks(facts),
        dedup(facts),
        contamination(facts, plots),
        difficulty(facts, plots),
        token_lengths(facts, plots),
        reproduce(facts),
    ]
    return [s for s in built if s is not None]
