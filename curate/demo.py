"""`curate demo`: run the packaged demo pipeline and say where everything is."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from curate.cli_common import console, stats_table


def demo_pipeline_path(name: str = "demo.yaml") -> Path:
    return Path(str(resources.files("curate.pipelines").joinpath(name)))


def code_demo_dir(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + "-code")


def run_demo(out: Path, *, workers: int | None = None, progress: bool = True) -> list:
    from curate.executors import make_executor
    from curate.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(demo_pipeline_path())
    manifests = run_pipeline(pipeline, out, executor=make_executor("local", workers=workers), progress=progress)
    code_out = code_demo_dir(out)
    run_pipeline(load_pipeline(demo_pipeline_path("demo_code.yaml")), code_out,
                 executor=make_executor("local", workers=workers), progress=progress)
    console.print(stats_table(out))
    console.print(stats_table(code_out))
    console.print(f"\n[bold]Outputs[/] under {out}/ (one folder per step, Parquet shards + _manifest.json)")
    for hook in _after_demo_hooks():
        hook(out)
    console.print("\n[bold]Next[/]:")
    console.print(f'  curate query {out} "select teacher, count(*) from traces group by 1"')
    console.print(f"  curate stats {out}")
    console.print(f'  curate query {code_out} "select code__verdict, count(*) from traces group by 1"')
    return manifests


def _after_demo_hooks():
    """Later stages (cards, reports) add what the demo prints at the end."""
    hooks = []
    try:
        from curate.cards.demo_hook import after_demo
    except ImportError:
        return hooks
    hooks.append(after_demo)
    return hooks
