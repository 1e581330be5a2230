"""`curate card`, `curate report`, `curate publish`. Imports stay inside the commands: `curate
--help` must not load matplotlib, DuckDB or huggingface_hub."""

from __future__ import annotations

from pathlib import Path

import typer

from curate.cli_common import console, fail


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False)  # never break a path across lines


def _shard_bytes(max_shard_mb: int) -> int:
    if max_shard_mb < 1:
        fail("--max-shard-mb must be at least 1")
    return max_shard_mb * 1024 * 1024


def card_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path | None = typer.Option(None, "--out", help="Export folder [default: RUN/export]."),
    max_shard_mb: int = typer.Option(1024, help="Shards larger than this are split into several files."),
    templates: Path | None = typer.Option(None, help="Folder with card.md.j2 / report.html.j2 overriding the built-in ones."),
) -> None:
    from curate.cards.export import write_export
    from curate.cards.layout import CardError

    try:
        export = write_export(run, out, max_shard_bytes=_shard_bytes(max_shard_mb), template_dir=templates)
    except CardError as exc:
        fail(str(exc))
    _say(f"card: {export.card}")
    for path in export.plots.values():
        _say(f"plot: {path}")
    for name, shards in export.data.items():
        _say(f"data: {export.folder / 'data' / name}/ ({len(shards)} shard(s))")


def report_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path | None = typer.Option(None, "--out", help="HTML file [default: RUN/report.html]."),
    templates: Path | None = typer.Option(None, help="Folder with card.md.j2 / report.html.j2 overriding the built-in ones."),
) -> None:
    from curate.cards.export import write_report
    from curate.cards.layout import CardError

    try:
        path = write_report(run, out, template_dir=templates)
    except CardError as exc:
        fail(str(exc))
    _say(f"report: {path}")


def publish_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    repo_id: str = typer.Option(..., "--repo-id", help="Dataset repository on the Hub, ORG/NAME."),
    public: bool = typer.Option(False, "--public", help="Create the repository public (default: private)."),
    dry_run: Path | None = typer.Option(None, "--dry-run", help="Write the folder that would be uploaded here; "
                                        "no token, no network."),
    revision: str | None = typer.Option(None, help="Branch to commit to [default: main]."),
    max_shard_mb: int = typer.Option(1024, help="Shards larger than this are split into several files."),
    commit_files: int = typer.Option(100, help="Most files per commit (each commit is a resume point)."),
    commit_mb: int = typer.Option(4096, help="Most megabytes per commit."),
    message: str = typer.Option("Publish curated traces with trace-curate", help="Commit message."),
) -> None:
    from curate.cards import publish
    from curate.cards.layout import CardError

    token = None
    if dry_run is None:
        # before any work: a missing token must not cost a card build first
        try:
            publish.check_repo_id(repo_id)
            token = publish.resolve_token()
        except publish.PublishError as exc:
            fail(str(exc))
    try:
        if dry_run is not None:
            publish.check_repo_id(repo_id)
            files = publish.dry_run(run, dry_run, max_shard_bytes=_shard_bytes(max_shard_mb))
            _say(f"dry run: {len(files)} file(s) that would be uploaded to {repo_id} are in {dry_run}")
            return
        result = publish.publish(run, repo_id, token=token, private=not public, revision=revision,
                                 max_shard_bytes=_shard_bytes(max_shard_mb), commit_max_files=commit_files,
                                 commit_max_bytes=commit_mb * 1024 * 1024, message=message)
    except (CardError, publish.PublishError) as exc:
        fail(str(exc))
    if not result.uploaded and not result.deleted:
        _say(f"{repo_id}: already up to date ({len(result.unchanged)} file(s) unchanged); nothing uploaded")
    else:
        _say(f"{repo_id}: uploaded {len(result.uploaded)} file(s), deleted {len(result.deleted)} stale, "
             f"{len(result.unchanged)} unchanged, in {result.commits} commit(s)")
    _say(f"https://huggingface.co/datasets/{repo_id}")


def register(app: typer.Typer) -> None:
    app.command(
        "card",
        help="Write the data card (README.md with Hub metadata), its plots and the data shards into the run's "
        "export folder.\n\n\b\nExample:\n  curate card runs/demo",
    )(card_cmd)
    app.command(
        "report",
        help="Write the card's content as one self-contained HTML page (plots inlined).\n\n\b\nExample:\n"
        "  curate report runs/demo --out demo.html",
    )(report_cmd)
    app.command(
        "publish",
        help="Publish a run's export to the Hugging Face Hub as a dataset (private by default). Token from "
        "HF_TOKEN or `hf auth login`; unchanged files are not uploaded again.\n\n\b\nExample:\n"
        "  curate publish runs/demo --repo-id my-org/demo-traces\n"
        "  curate publish runs/demo --repo-id my-org/demo-traces --dry-run /tmp/upload",
    )(publish_cmd)
