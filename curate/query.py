"""`curate query`: DuckDB SQL over a run, printed as a table, CSV or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
from rich.table import Table

from curate.cli_common import console, fail
from curate.duck import fetch_arrow
from curate.runs import connect


def run_query(run: Path, sql: str, *, fmt: str = "table", limit: int = 200) -> None:
    con, views = connect(run)
    try:
        result = fetch_arrow(con.sql(sql))
    except duckdb.Error as exc:
        fail(f"{exc}\nviews in {run}: {', '.join(views) or 'none'}")
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
        return
    if fmt == "json":
        for row in result.to_pylist():
            sys.stdout.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        return
    table = Table(show_lines=False)
    for name in result.column_names:
        table.add_column(name)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*["" if v is None else _short(v) for v in row.values()])
    console.print(table)
    if result.num_rows > limit:
        console.print(f"({result.num_rows:,} rows, {limit} shown; --limit or --format csv for all)")


def _short(value: object, width: int = 120) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"
