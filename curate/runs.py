"""Reading a run directory back: its steps, their manifests, and DuckDB views over them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from curate.io import MANIFEST, PLAN, REJECTS, part_files
from curate.manifest import Manifest
from curate.schemas.tables import PROBLEM_COLUMNS

_STEP = re.compile(r"^(\d{2,})-(.+)$")
# Score namespaces whose values are per problem (the same on every trace of a problem).
PROBLEM_LEVEL_NAMESPACES = ("difficulty",)


@dataclass
class StepInfo:
    index: int
    id: str
    path: Path
    manifest: Manifest | None

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def table(self) -> str:
        return self.manifest.output_table if self.manifest else "unknown"


def list_steps(run_dir: Path) -> list[StepInfo]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {run_dir} does not exist")
    steps = []
    for child in sorted(run_dir.iterdir()):
        match = _STEP.match(child.name)
        if child.is_dir() and match and ((child / MANIFEST).exists() or (child / PLAN).exists()):
            steps.append(StepInfo(int(match.group(1)), match.group(2), child, Manifest.load(child)))
    return steps


def latest_step(run_dir: Path) -> StepInfo | None:
    done = [s for s in list_steps(run_dir) if s.complete]
    return done[-1] if done else None


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _glob(path: Path) -> str:
    return str(path / "part-*.parquet").replace("'", "''")


def connect(run_dir: Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """A DuckDB connection with a view per finished step (named after the step), `traces` and
    `problems` (the latest state of each table, every row with all its scores), `curated` (the
    latest select output), side outputs (`<step>_<name>`) and `rejects`."""
    con = duckdb.connect()
    views: list[str] = []
    steps = [s for s in list_steps(run_dir) if s.complete and part_files(s.path)]
    seen: set[str] = set()
    for step in steps:
        name = _ident(step.id)
        if name in seen:
            name = f"s{step.index:02d}_{name}"
        seen.add(name)
        con.execute(f"create view \"{name}\" as select * from read_parquet('{_glob(step.path)}', union_by_name=true)")
        views.append(name)
        for side in sorted(p for p in step.path.iterdir() if p.is_dir() and part_files(p)):
            side_name = f"{name}_{_ident(side.name)}"
            con.execute(f"create view \"{side_name}\" as select * from read_parquet('{_glob(side)}')")
            views.append(side_name)
    # `traces`: the latest table with every row and all its scores (selection drops rows, so its
    # output is `curated` instead).
    selected = [s for s in steps if s.manifest and s.manifest.stage == "select"]
    if selected:
        con.execute(f"create view curated as select * from read_parquet('{_glob(selected[-1].path)}', union_by_name=true)")
        views.append("curated")
    traces = [s for s in steps if s.table == "traces" and s not in selected]
    problems = [s for s in steps if s.table == "problems"]
    if traces:
        con.execute(f"create view traces as select * from read_parquet('{_glob(traces[-1].path)}', union_by_name=true)")
        views.append("traces")
        columns = [r[0] for r in con.execute("select column_name from (describe traces)").fetchall()]
        keep = [c for c in columns if c in PROBLEM_COLUMNS or c.split("__")[0] in PROBLEM_LEVEL_NAMESPACES]
        cols = ", ".join(f'"{c}"' for c in keep)
        con.execute(f"create view problems as select distinct on (problem_id) {cols} from traces order by problem_id")
        views.append("problems")
    elif problems:
        con.execute(f"create view problems as select * from read_parquet('{_glob(problems[-1].path)}')")
        views.append("problems")
    rejects = [s for s in list_steps(run_dir) if (s.path / REJECTS).exists()]
    if rejects:
        union = " union all ".join(
            f"select '{s.path.name}' as step, * from read_parquet('{str(s.path / REJECTS)}')" for s in rejects
        )
        con.execute(f"create view rejects as {union}")
        views.append("rejects")
    return con, views
