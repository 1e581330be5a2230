"""Printing shared by CLI commands."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from curate.manifest import Manifest

console = Console()


def print_manifest(manifest: Manifest, step_dir: Path) -> None:
    console.print(
        f"[bold]{manifest.step}[/]: {manifest.rows_in:,} rows in, {manifest.rows_out:,} out, "
        f"{manifest.rows_rejected:,} rejected in {manifest.wall_s:.1f}s -> {step_dir}"
    )


def stats_table(run_dir: Path) -> Table:
    from curate.runs import list_steps

    table = Table(title=f"run {run_dir}")
    for col in ("step", "stage", "status", "rows in", "rows out", "rejected", "wall s", "counts"):
        table.add_column(col, justify="right" if col.startswith(("rows", "rej", "wall")) else "left",
                         no_wrap=col != "counts", overflow="fold")
    for step in list_steps(run_dir):
        m = step.manifest
        if m is None:
            table.add_row(step.path.name, step.id, "incomplete", "", "", "", "", "")
            continue
        counts = ", ".join(f"{k}={v:,}" for k, v in sorted(m.counts.items()) if v)
        table.add_row(step.path.name, m.stage, "done", f"{m.rows_in:,}", f"{m.rows_out:,}",
                      f"{m.rows_rejected:,}", f"{m.wall_s:.1f}", counts)
    return table


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit."""
    import typer

    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)
