"""The demo ends by writing its card, plots and report, and says where they are."""

from __future__ import annotations

from pathlib import Path

from curate.cli_common import console


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False)  # never break a path across lines


def after_demo(out: Path) -> None:
    from curate.cards.export import write_export, write_report

    export = write_export(out)
    report = write_report(out, export=export)
    _say("\n[bold]Data card[/] (Hub-ready export folder):")
    _say(f"  card:   {export.card}")
    for path in export.plots.values():
        _say(f"  plot:   {path}")
    _say(f"  report: {report}")
    _say(f"  publish: curate publish {out} --repo-id ORG/NAME  (or --dry-run DIR to inspect the upload)")
