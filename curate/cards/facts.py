"""Every number a card states, computed from the run's Parquet with DuckDB (never from memory of
what a stage said it did). Each collector returns None when the run lacks the columns or steps it
needs, so a card describes whatever subset of the pipeline ran.

Two tables are read: `scored` (every trace with all its scores: the step selection read) for
rates and reasons, and `curated` (the final traces step) for what a trainer gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from curate import __version__
from curate.cards.layout import RunLayout
from curate.duck import fetch_arrow
from curate.io import REJECTS, count_rows, part_files
from curate.schemas.verdicts import UNCHECKED, VERIFIED

BUCKET_ORDER = ("trivial", "easy", "medium", "hard", "unsolved", "unknown")
# (label, stage, cluster column, survivor column, unit); unit None: from the stage's `field`
# config (prompt -> problems, anything else -> traces).
DEDUP_METHODS = (
    ("exact", "dedup_exact", "exact__trace_group", "exact__is_first", "trace"),
    ("exact prompts", "dedup_exact", "exact__problem_group", None, "problem"),
    ("minhash", "dedup_minhash", "minhash__cluster_id", "minhash__is_survivor", None),
    ("semantic", "dedup_semantic", "semantic__cluster_id", "semantic__is_survivor", None),
)
TOKEN_REGEX = r"\w+|[^\w\s]"  # the same approximate count verify_format uses
EXAMPLES_PER_BENCHMARK = 3
MAX_PARAMS = 3  # sampling settings listed per teacher
EXCERPT_CHARS = 160


@dataclass
class Facts:
    """Plain data (JSON-able) plus the arrays the plots need."""

    data: dict[str, Any]
    token_lengths: dict[str, np.ndarray] = field(default_factory=dict)  # teacher -> lengths (curated)

    def __getitem__(self, key: str) -> Any:
        return self.data.get(key)


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _files_sql(files: list[Path]) -> str:
    return "[" + ", ".join(_q(str(f)) for f in files) + "]"


class RunQuery:
    """A DuckDB connection with views `scored`, `curated` and one `config_<name>` per export."""

    def __init__(self, layout: RunLayout):
        self.con = duckdb.connect()
        self.con.execute("set threads to 2")
        self.con.execute("set enable_progress_bar = false")  # cards are written by CLIs and the demo
        self._columns: dict[str, list[str]] = {}
        self._view("scored", part_files(layout.scored.path))
        self._view("curated", part_files(layout.curated.path))
        for name, files in layout.configs.items():
            self._view(f"config_{name}", files)

    def _view(self, name: str, files: list[Path]) -> None:
        self.con.execute(f'create view "{name}" as select * from read_parquet({_files_sql(files)}, union_by_name=true)')
        self._columns[name] = [r[0] for r in self.con.execute(f'select column_name from (describe "{name}")').fetchall()]

    def columns(self, view: str) -> list[str]:
        return self._columns[view]

    def has(self, view: str, *columns: str) -> bool:
        return all(c in self._columns[view] for c in columns)

    def rows(self, sql: str, params: list | None = None) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def scalar(self, sql: str) -> Any:
        return self.con.execute(sql).fetchone()[0]


def _verified_sql(q: RunQuery, view: str) -> tuple[str, str] | None:
    """SQL for 'verified' and 'has a real verdict' over the verifier columns the view has."""
    present = [c for c in VERIFIED if q.has(view, c)]
    if not present:
        return None
    unchecked = ", ".join(_q(v) for v in UNCHECKED)
    verified = " or ".join(f"coalesce(\"{c}\" = {_q(VERIFIED[c])}, false)" for c in present)
    checked = " or ".join(f"(\"{c}\" is not null and \"{c}\" not in ({unchecked}))" for c in present)
    return f"({verified})", f"({checked})"


# -- sections -----------------------------------------------------------------------------
def overview(q: RunQuery, layout: RunLayout) -> dict[str, Any]:
    configs = {name: count_rows(files) for name, files in layout.configs.items()}
    return {
        "name": layout.name,
        "package_version": __version__,
        "run_package_versions": sorted({s.manifest.package_version for s in layout.steps}),
        "configs": configs,
        "curated_rows": configs["curated"],
        "scored_rows": count_rows(part_files(layout.scored.path)),
        "curated_step": layout.curated.path.name,
        "scored_step": layout.scored.path.name,
        "problems": q.scalar("select count(distinct problem_id) from curated") if q.has("curated", "problem_id") else None,
        "teachers": q.scalar("select count(distinct teacher) from curated") if q.has("curated", "teacher") else None,
        "domains": [r["domain"] for r in q.rows("select distinct domain from curated where domain is not null order by 1")]
        if q.has("curated", "domain") else [],
    }


def licenses(q: RunQuery, layout: RunLayout) -> list[dict[str, Any]]:
    """Licence -> rows over every published config that carries a licence column."""
    parts = [f'select coalesce("license", \'unknown\') as license from "config_{name}"'
             for name in layout.configs if q.has(f"config_{name}", "license")]
    if not parts:
        return [{"license": "unknown", "rows": sum(count_rows(f) for f in layout.configs.values())}]
    return q.rows(f"select license, count(*) as rows from ({' union all '.join(parts)}) group by 1 order by 1")


def sources(q: RunQuery) -> list[dict[str, Any]] | None:
    if not q.has("scored", "source", "problem_id"):
        return None
    lic = "coalesce(license, 'unknown')" if q.has("scored", "license") else "'unknown'"
    dom = "string_agg(distinct domain, ', ' order by domain)" if q.has("scored", "domain") else "''"
    lic_c = "coalesce(license, 'unknown')" if q.has("curated", "license") else "'unknown'"
    return q.rows(f"""
        with s as (select source, {lic} as license, {dom} as domains, count(distinct problem_id) as problems,
                          count(*) as traces from scored group by 1, 2),
             c as (select source, {lic_c} as license, count(distinct problem_id) as curated_problems,
                          count(*) as curated_traces from curated group by 1, 2)
        select s.*, coalesce(c.curated_problems, 0) as curated_problems,
               coalesce(c.curated_traces, 0) as curated_traces
        from s left join c using (source, license) order by source, license""")


def teachers(q: RunQuery) -> list[dict[str, Any]] | None:
    if not q.has("scored", "teacher"):
        return None
    backend = "string_agg(distinct backend, ', ' order by backend)" if q.has("scored", "backend") else "''"
    out = q.rows(f"""
        with s as (select teacher, {backend} as backends, count(*) as traces from scored group by 1),
             c as (select teacher, count(*) as curated from curated group by 1)
        select s.*, coalesce(c.curated, 0) as curated from s left join c using (teacher) order by teacher""")
    params: dict[str, list[str]] = {}
    distinct: dict[str, int] = {}
    if q.has("scored", "sampling_params"):
        # the most common settings per teacher, seed left out: a per-trace seed would make every
        # trace's settings distinct (the seed has its own column)
        settings = (f"coalesce(try(json_merge_patch(sampling_params, {_q(json.dumps({'seed': None}))})::varchar), "
                    "sampling_params)")
        for r in q.rows(f"""
                select teacher, sampling_params, n, count(*) over (partition by teacher) as kinds from (
                    select teacher, {settings} as sampling_params, count(*) as n from scored
                    where sampling_params is not null and sampling_params <> '' group by 1, 2)
                qualify row_number() over (partition by teacher order by n desc, sampling_params) <= {MAX_PARAMS}
                order by teacher, n desc, sampling_params"""):
            params.setdefault(r["teacher"], []).append(r["sampling_params"])
            distinct[r["teacher"]] = r["kinds"]
    for row in out:
        row["sampling_params"] = params.get(row["teacher"], [])
        row["sampling_params_distinct"] = distinct.get(row["teacher"], 0)
    return out


def _step_rows_in(step, by_path: dict[str, int]) -> int:
    source = step.manifest.input or {}
    if source.get("kind") == "step":
        name = Path(source.get("step", "")).name
        if name in by_path:
            return by_path[name]
    return step.manifest.rows_in


def funnel(q: RunQuery, layout: RunLayout) -> dict[str, Any]:
    steps, rows_out, reject_rows = [], {}, []
    for step in layout.steps:
        out = count_rows(part_files(step.path))
        rows_out[step.path.name] = out
        rejects_file = step.path / REJECTS
        rejected = pq.ParquetFile(rejects_file).metadata.num_rows if rejects_file.exists() else 0
        rows_in = _step_rows_in(step, rows_out)
        steps.append({"step": step.path.name, "stage": step.manifest.stage, "table": step.table, "rows_in": rows_in,
                      "rows_out": out, "rejected": rejected, "removed": max(rows_in - out - rejected, 0)})
        if rejected:
            grouped = q.rows(f"select field, reason, count(*) as rows from read_parquet({_q(str(rejects_file))}) "
                             "group by 1, 2 order by 3 desc, 1, 2 limit 20")
            reject_rows += [{"step": step.path.name, **r} for r in grouped]
    return {"steps": steps, "rejects": reject_rows, "rules": _select_rules(q, layout)}


def _select_rules(q: RunQuery, layout: RunLayout) -> dict[str, Any] | None:
    """Rows each selection rule removed, from select's per-trace decision table."""
    step = layout.select
    if step is None:
        return None
    state = step.path / "_state.parquet"
    funnel_summary = step.manifest.summary.get("funnel", [])
    order = [f["rule"] for f in funnel_summary if f.get("rule") != "input"]
    if not state.exists() or "select__dropped_by" not in pq.read_schema(state).names:
        return _rules_from_manifest(step, funnel_summary)
    q.con.execute(f"create or replace view decisions as select * from read_parquet({_q(str(state))})")
    total = q.scalar("select count(*) from decisions")
    dropped = {r["rule"]: r["rows"] for r in q.rows(
        "select select__dropped_by as rule, count(*) as rows from decisions where select__dropped_by is not null group by 1")}
    order += sorted(set(dropped) - set(order))
    left, rules = total, []
    for rule in order:
        left -= dropped.get(rule, 0)
        rules.append({"rule": rule, "dropped": dropped.get(rule, 0), "rows_left": left})
    per_teacher = None
    if q.has("scored", "teacher"):
        per_teacher = q.rows("""
            select s.teacher, coalesce(d.select__dropped_by, 'kept') as outcome, count(*) as rows
            from scored s join decisions d using (trace_id) group by 1, 2 order by 1, 2""")
    return {"input": total, "rules": rules, "kept": left, "per_teacher": per_teacher}


def _rules_from_manifest(step, funnel_summary: list[dict]) -> dict[str, Any] | None:
    """Fallback for a select step without its decision table: the funnel its manifest recorded."""
    if not funnel_summary or funnel_summary[0].get("rule") != "input":
        return None
    rules, previous = [], funnel_summary[0]["rows_left"]
    for entry in funnel_summary[1:]:
        rules.append({"rule": entry["rule"], "dropped": previous - entry["rows_left"], "rows_left": entry["rows_left"]})
        previous = entry["rows_left"]
    return {"input": funnel_summary[0]["rows_left"], "rules": rules, "kept": previous, "per_teacher": None}


def verification(q: RunQuery) -> dict[str, Any] | None:
    sql = _verified_sql(q, "scored")
    if sql is None:
        return None
    verified, checked = sql
    teacher = "teacher" if q.has("scored", "teacher") else "'all'"
    domain = "domain" if q.has("scored", "domain") else "'all'"
    by_group = q.rows(f"""
        select {teacher} as teacher, {domain} as domain, count(*) as traces,
               count(*) filter (where {checked}) as checked, count(*) filter (where {verified}) as verified
        from scored group by 1, 2 order by 1, 2""")
    for row in by_group:
        row["pass_rate"] = row["verified"] / row["traces"] if row["traces"] else None
        row["pass_rate_checked"] = row["verified"] / row["checked"] if row["checked"] else None
    verdicts = []
    for column in (c for c in VERIFIED if q.has("scored", c)):
        for r in q.rows(f'select coalesce("{column}", \'(null)\') as verdict, count(*) as rows from scored '
                        "group by 1 order by 2 desc, 1"):
            verdicts.append({"column": column, **r})
    return {"columns": [c for c in VERIFIED if q.has("scored", c)], "by_group": by_group, "verdicts": verdicts}


def format_checks(q: RunQuery) -> list[dict[str, Any]] | None:
    schema = q.con.execute("select column_name, column_type from (describe scored)").fetchall()
    flags = [name for name, kind in schema if name.startswith("format__") and kind == "BOOLEAN"]
    if not flags:
        return None
    out = []
    for flag in flags:
        row = q.rows(f'select count(*) filter (where "{flag}") as yes, count(*) filter (where not "{flag}") as no, '
                     f'count(*) filter (where "{flag}" is null) as unknown from scored')[0]
        out.append({"column": flag, **row})
    return out


def _dedup_unit(layout: RunLayout, stage: str, fixed: str | None) -> str:
    if fixed:
        return fixed
    steps = layout.step_by_stage(stage)
    field_name = steps[-1].manifest.config.get("field") if steps else None
    return "problem" if field_name == "prompt" else "trace"


def dedup(q: RunQuery, layout: RunLayout) -> list[dict[str, Any]] | None:
    """Clusters of more than one item, counted in the unit the method deduplicates: traces, or
    problems for prompt-level methods (all traces of a problem share its cluster)."""
    out = []
    for method, stage, cluster, survivor, fixed_unit in DEDUP_METHODS:
        if not q.has("scored", cluster) or (fixed_unit == "problem" and not q.has("scored", "problem_id")):
            continue
        unit = _dedup_unit(layout, stage, fixed_unit)
        if unit == "problem" and not q.has("scored", "problem_id"):
            unit = "trace"
        item = "problem_id" if unit == "problem" else "trace_id"
        surv = f'bool_and("{survivor}")' if survivor and q.has("scored", survivor) else "null"
        row = q.rows(f"""
            with items as (select {item} as item, any_value("{cluster}") as id, {surv} as survivor
                           from scored where "{cluster}" is not null group by 1),
                 c as (select id, count(*) as n from items group by 1)
            select (select count(*) from c where n > 1) as clusters,
                   (select coalesce(sum(n), 0) from c where n > 1) as in_clusters,
                   (select coalesce(max(n), 0) from c) as largest,
                   {"(select count(*) filter (where survivor = false) from items)" if surv != "null" else "null"}
                       as duplicates""")[0]
        out.append({"method": method, "cluster_column": cluster, "unit": f"{unit}s", **row})
    return out or None


def _benchmarks_checked(layout: RunLayout) -> list[str]:
    names: list[str] = []
    for step in layout.step_by_stage("decontaminate"):
        for key in ("against", "benchmarks"):
            for item in step.manifest.config.get(key) or []:
                label = item if isinstance(item, str) else json.dumps(item, sort_keys=True)
                file, sep, _field = label.rpartition(":")
                if sep and ("/" in file or "." in Path(file).name):  # PATH.jsonl:FIELD, named by its file
                    label = Path(file).name.split(".")[0]
                if label not in names:
                    names.append(label)
    return names


def contamination(q: RunQuery, layout: RunLayout) -> dict[str, Any] | None:
    if not q.has("scored", "decon__benchmark"):
        return None
    curated_hits = (
        "(select decon__benchmark as benchmark, count(*) as n from curated where decon__benchmark is not null group by 1)"
        if q.has("curated", "decon__benchmark") else "(select null::varchar as benchmark, 0 as n where false)")
    problems = "count(distinct problem_id)" if q.has("scored", "problem_id") else "null"
    methods = "string_agg(distinct decon__method, ', ' order by decon__method)" if q.has("scored", "decon__method") else "''"
    hits = q.rows(f"""
        with h as (select decon__benchmark as benchmark, count(*) as traces, {problems} as problems, {methods} as methods
                   from scored where decon__benchmark is not null group by 1)
        select h.*, coalesce(c.n, 0) as curated_traces from h left join {curated_hits} c using (benchmark)
        order by traces desc, benchmark""")
    examples: list[dict[str, Any]] = []
    if hits:
        item = "decon__item_id" if q.has("scored", "decon__item_id") else "null"
        score = "decon__score" if q.has("scored", "decon__score") else "null"
        method = "decon__method" if q.has("scored", "decon__method") else "null"
        pid = "problem_id" if q.has("scored", "problem_id") else "null"
        prompt = "prompt" if q.has("scored", "prompt") else "''"
        examples = q.rows(f"""
            with p as (select decon__benchmark as benchmark, {pid} as problem_id, any_value({item}) as item_id,
                              max({score}) as score, any_value({method}) as method,
                              left(any_value({prompt}), {EXCERPT_CHARS}) as excerpt
                       from scored where decon__benchmark is not null group by 1, 2)
            select * from (select *, row_number() over (partition by benchmark order by score desc nulls last,
                                                        problem_id) as rank from p)
            where rank <= {EXAMPLES_PER_BENCHMARK} order by benchmark, rank""")
    checked = _benchmarks_checked(layout)
    for row in hits:
        if row["benchmark"] not in checked:
            checked.append(row["benchmark"])
    total = q.rows(f"select count(*) as traces, {problems} as problems from scored where decon__benchmark is not null")[0]
    return {"checked": checked, "hits": hits, "examples": examples, "total": total}


def difficulty(q: RunQuery) -> dict[str, Any] | None:
    if not q.has("scored", "difficulty__bucket", "problem_id"):
        return None
    rate = "avg(difficulty__pass_rate)" if q.has("scored", "difficulty__pass_rate") else "null"
    curated = ("(select coalesce(difficulty__bucket, 'unknown') as bucket, count(*) as n from curated group by 1)"
               if q.has("curated", "difficulty__bucket") else "(select null::varchar as bucket, 0 as n where false)")
    buckets = q.rows(f"""
        with p as (select problem_id, any_value(coalesce(difficulty__bucket, 'unknown')) as bucket,
                          any_value({'difficulty__pass_rate' if rate != 'null' else 'null'}) as pass_rate
                   from scored group by 1),
             pb as (select bucket, count(*) as problems, avg(pass_rate) as mean_pass_rate from p group by 1),
             tb as (select coalesce(difficulty__bucket, 'unknown') as bucket, count(*) as traces from scored group by 1)
        select pb.bucket, pb.problems, tb.traces, pb.mean_pass_rate, coalesce(c.n, 0) as curated_traces
        from pb join tb using (bucket) left join {curated} c using (bucket)""")
    buckets.sort(key=_bucket_key)
    by_teacher = None
    sql = _verified_sql(q, "scored")
    if sql and q.has("scored", "teacher"):
        by_teacher = q.rows(f"""
            select teacher, coalesce(difficulty__bucket, 'unknown') as bucket, count(*) as traces,
                   count(*) filter (where {sql[0]}) as verified
            from scored group by 1, 2 order by 1, 2""")
        for row in by_teacher:
            row["pass_rate"] = row["verified"] / row["traces"]
    return {"buckets": buckets, "by_teacher": by_teacher}


def _bucket_key(row: dict[str, Any]) -> tuple[int, str]:
    bucket = row["bucket"]
    return (BUCKET_ORDER.index(bucket) if bucket in BUCKET_ORDER else len(BUCKET_ORDER), bucket)


def token_measure(q: RunQuery, view: str = "curated") -> tuple[str, str] | None:
    """(SQL expression, what it measures) for a trace's length in tokens."""
    if q.has(view, "completion_tokens") and q.scalar(
            f'select count(*) = count(completion_tokens) and count(*) > 0 from "{view}"'):
        return "completion_tokens", "completion tokens reported by the teacher's backend"
    if q.has(view, "format__tokens"):
        return "format__tokens", "approximate tokens of reasoning + answer (words and punctuation, from verify_format)"
    if q.has(view, "reasoning", "answer"):
        expr = (f"len(regexp_extract_all(coalesce(reasoning, '') || ' ' || coalesce(answer, ''), {_q(TOKEN_REGEX)}))")
        return expr, "approximate tokens of reasoning + answer (words and punctuation)"
    return None


def tokens(q: RunQuery) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    measure = token_measure(q)
    if measure is None:
        return None, {}
    expr, label = measure
    teacher = "teacher" if q.has("curated", "teacher") else "'all'"
    q.con.execute(f"create or replace view lengths as select {teacher} as teacher, ({expr})::bigint as tokens "
                  "from curated")
    stats = """count(tokens) as traces, avg(tokens) as mean, median(tokens) as median,
               quantile_cont(tokens, 0.9) as p90, max(tokens) as max, sum(tokens) as total"""
    per_teacher = q.rows(f"select teacher, {stats} from lengths where tokens is not null group by 1 order by 1")
    overall = q.rows(f"select 'all teachers' as teacher, {stats} from lengths where tokens is not null")[0]
    table = fetch_arrow(q.con.sql("select teacher, tokens from lengths where tokens is not null order by teacher"))
    arrays: dict[str, np.ndarray] = {}
    if table.num_rows:
        codes = table.column("teacher").combine_chunks().dictionary_encode()
        indices = codes.indices.to_numpy(zero_copy_only=False)
        values = table.column("tokens").to_numpy()
        for i, name in enumerate(codes.dictionary.to_pylist()):
            arrays[name] = values[indices == i]
    return {"measure": label, "per_teacher": per_teacher, "overall": overall}, arrays


def pipeline(layout: RunLayout) -> dict[str, Any]:
    yaml_file = layout.run / "pipeline.yaml"
    steps, policies = [], []
    for step in layout.steps:
        m = step.manifest
        steps.append({"step": step.path.name, "stage": m.stage, "version": m.version, "config_hash": m.config_hash,
                      "config": m.config, "package_version": m.package_version})
        policy = m.config.get("policy") if m.stage == "select" else None
        applied = m.summary.get("policy") if m.stage == "select" else None
        if isinstance(applied, dict):  # the policy as the step applied it, when the stage records it
            policies.append({"step": step.path.name, "path": "as applied", "text": json.dumps(applied, indent=2)})
        elif isinstance(policy, str) and Path(policy).is_file():
            policies.append({"step": step.path.name, "path": Path(policy).name, "text": Path(policy).read_text()})
        elif isinstance(policy, dict):
            policies.append({"step": step.path.name, "path": "(inline)", "text": json.dumps(policy, indent=2)})
    return {"yaml": yaml_file.read_text() if yaml_file.exists() else None, "steps": steps, "policies": policies}


def collect(layout: RunLayout) -> Facts:
    q = RunQuery(layout)
    try:
        token_stats, arrays = tokens(q)
        data = {
            "overview": overview(q, layout),
            "licenses": licenses(q, layout),
            "sources": sources(q),
            "teachers": teachers(q),
            "funnel": funnel(q, layout),
            "verification": verification(q),
            "format": format_checks(q),
            "dedup": dedup(q, layout),
            "contamination": contamination(q, layout),
            "difficulty": difficulty(q),
            "tokens": token_stats,
            "pipeline": pipeline(layout),
        }
    finally:
        q.con.close()
    return Facts(_stable_floats(data), arrays)


def _stable_floats(value: Any) -> Any:
    """DuckDB sums floats in parallel, so an average can differ in its last bits from one query to
    the next; 12 significant digits make the facts (and so the card and its plot digest) the same
    for the same run."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _stable_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stable_floats(v) for v in value]
    return value
