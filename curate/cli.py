"""`curate`: the command line. Core commands live here; every registered stage gets its own
command from `cli_stages`; bigger command families (train, export, card, publish) register
themselves from their packages through PLUGINS."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import typer

from curate.cli_common import console, fail, print_manifest, stats_table

app = typer.Typer(
    name="curate",
    help="Curate multi-teacher reasoning traces into a verified, deduplicated, decontaminated training set.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

# Modules with `register(app)`; each keeps heavy imports (torch, vllm) inside its commands.
PLUGINS = ["curate.trainer.cli", "curate.cards.cli"]


@app.command(
    "run",
    help="Run a pipeline YAML; finished steps whose config and input are unchanged are skipped, "
    "interrupted ones resume.\n\n\b\nExample:\n  curate run pipelines/demo.yaml --out runs/demo",
)
def run_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (see pipelines/)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory [default: runs/<pipeline name>]."),
    engine: str = typer.Option("local", help="local (process pool), inprocess, or ray."),
    address: str | None = typer.Option(None, help="Ray cluster address (with --engine ray)."),
    workers: int | None = typer.Option(None, help="Worker processes [default: all cores]."),
    only: list[str] = typer.Option([], help="Run only these step ids (repeatable)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from curate.executors import make_executor
    from curate.pipeline import PipelineError, load_pipeline, run_pipeline

    try:
        pipe = load_pipeline(pipeline)
    except PipelineError as exc:
        fail(str(exc))
    out = out or Path("runs") / pipe.name
    manifests = run_pipeline(pipe, out, executor=make_executor(engine, workers=workers, address=address),
                             progress=progress, only=only or None)
    for manifest in manifests:
        print_manifest(manifest, out / manifest.step)


@app.command(
    "demo",
    help="Run the embedded demo pipeline on real multi-teacher traces shipped in the package.\n\n\b\n"
    "Example:\n  curate demo --out runs/demo",
)
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    workers: int | None = typer.Option(None, help="Worker processes [default: all cores]."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from curate.demo import run_demo

    run_demo(out, workers=workers, progress=progress)


@app.command(
    "stats",
    help="Rows in, out and rejected, and per-reason counts, for every step of a run.\n\n\b\n"
    "Example:\n  curate stats runs/demo",
)
def stats_cmd(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    console.print(stats_table(run))


@app.command(
    "query",
    help="SQL over a run with DuckDB: one view per step (named after it), `traces` and `problems` "
    "(latest state), side outputs as <step>_<name>, and `rejects`.\n\n\b\nExample:\n"
    '  curate query runs/demo "select teacher, count(*) from traces group by 1"',
)
def query_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    sql: str = typer.Argument(..., help="A DuckDB query."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    limit: int = typer.Option(200, help="Most rows printed as a table."),
) -> None:
    from curate.query import run_query

    run_query(run, sql, fmt=fmt, limit=limit)


def _load_plugins() -> None:
    for name in PLUGINS:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name).register(app)
        except Exception as exc:  # a broken optional family must not take `curate run` down with it
            logging.getLogger("curate").warning("commands from %s are unavailable: %s", name, exc)


_built = False


def build_app() -> typer.Typer:
    global _built
    if not _built:
        from curate.cli_stages import add_stage_commands

        _load_plugins()
        add_stage_commands(app)
        _built = True
    return app


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_app()(prog_name="curate")
    except KeyboardInterrupt:  # every stage resumes: say so rather than dump a traceback
        console.print("[yellow]interrupted; run the same command again to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
