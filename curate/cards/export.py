"""The export folder of a run: what gets published, laid out the way the Hub and `datasets` expect.

    export/
      README.md                      the card (Hub YAML metadata + the story of the set)
      plots/*.png                    linked from the card
      data/<config>/train-00000-of-00003.parquet ...   curated, negatives, logits
      pipeline.yaml, policies/*.yaml the exact pipeline to reproduce the run

Shards are hard links to the run's own files (no copy, no extra disk) unless one is larger than
`max_shard_bytes`, in which case it is rewritten as several smaller files. Writing the export
twice from an unchanged run gives byte-identical files, so a re-publish uploads nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq

from curate.cards.facts import Facts, collect
from curate.cards.layout import RunLayout, resolve_layout
from curate.cards.plots import PLOT_SIZES, render_plots
from curate.cards.render import render_card
from curate.io import COMPRESSION, atomic_path, atomic_write_bytes, atomic_write_json, read_json

DEFAULT_MAX_SHARD_BYTES = 1024 * 1024 * 1024
_SPLIT_STATE = ".split_sources.json"  # target shard -> the source it was cut from (skip re-cutting)
_PLOTS_STAMP = ".facts_digest.json"  # digest of the facts the PNGs show (skip re-drawing)


@dataclass
class Export:
    folder: Path
    card: Path
    plots: dict[str, Path]
    data: dict[str, list[Path]]
    extra: list[Path] = field(default_factory=list)  # pipeline.yaml, policies
    facts: Facts | None = None

    def files(self) -> list[Path]:
        """Every file to publish, in upload order: data first, the card last."""
        shards = [p for paths in self.data.values() for p in paths]
        return [*shards, *self.plots.values(), *self.extra, self.card]


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem, or links not allowed: copy instead
            shutil.copyfile(source, tmp)


def _signature(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _cut(source: Path, targets: list[Path]) -> None:
    """Rewrite one big shard as len(targets) files of about equal rows (row-group aligned)."""
    parquet = pq.ParquetFile(source)
    per_file = math.ceil(parquet.metadata.num_rows / len(targets))
    batches = parquet.iter_batches(batch_size=min(per_file, 65_536))
    pending = None
    for target in targets:
        with atomic_path(target) as tmp:
            writer = pq.ParquetWriter(tmp, parquet.schema_arrow, compression=COMPRESSION)
            written = 0
            while written < per_file:
                batch = pending if pending is not None else next(batches, None)
                pending = None
                if batch is None:
                    break
                room = per_file - written
                if batch.num_rows > room:
                    batch, pending = batch.slice(0, room), batch.slice(room)
                writer.write_batch(batch)
                written += batch.num_rows
            writer.close()


def write_shards(config: str, sources: list[Path], folder: Path, *, max_shard_bytes: int) -> list[Path]:
    """Place a config's shards under folder/data/<config>/ as train-NNNNN-of-NNNNN.parquet."""
    target_dir = folder / "data" / config
    target_dir.mkdir(parents=True, exist_ok=True)
    pieces = [(src, max(1, math.ceil(src.stat().st_size / max_shard_bytes))) for src in sources]
    total = sum(n for _, n in pieces)
    state_file = target_dir / _SPLIT_STATE
    state = read_json(state_file) if state_file.exists() else {}
    new_state, targets, index = {}, [], 0
    for source, n in pieces:
        names = [target_dir / f"train-{index + i:05d}-of-{total:05d}.parquet" for i in range(n)]
        index += n
        targets += names
        if n == 1:
            _link_or_copy(source, names[0])
            continue
        signature = _signature(source)
        if not all(p.exists() and state.get(p.name) == signature for p in names):
            _cut(source, names)
        new_state.update({p.name: signature for p in names})
    keep = {p.name for p in targets}
    for stale in target_dir.glob("*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    if new_state:
        atomic_write_json(state_file, new_state)
    elif state_file.exists():
        state_file.unlink()
    return targets


def _copy_reproduction_files(layout: RunLayout, folder: Path) -> list[Path]:
    out = []
    pipeline = layout.run / "pipeline.yaml"
    if pipeline.exists():
        target = folder / "pipeline.yaml"
        atomic_write_bytes(target, pipeline.read_bytes())
        out.append(target)
    for step in layout.step_by_stage("select"):
        policy = step.manifest.config.get("policy")
        if isinstance(policy, str) and Path(policy).is_file():
            # `${PIPELINE_DIR}/policies/x.yaml` resolves next to the exported pipeline.yaml
            target = folder / "policies" / Path(policy).name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, Path(policy).read_bytes())
            out.append(target)
    return out


def _facts_digest(facts: Facts) -> str:
    digest = hashlib.sha256(json.dumps(facts.data, sort_keys=True, default=str).encode())
    for teacher, values in sorted(facts.token_lengths.items()):
        digest.update(teacher.encode())
        digest.update(values.tobytes())
    digest.update(json.dumps([PLOT_SIZES, version("matplotlib")]).encode())
    return digest.hexdigest()


def _write_plots(facts: Facts, plot_dir: Path) -> tuple[dict[str, bytes], dict[str, Path]]:
    """Draw the plots, unless the facts they show are the ones already drawn (drawing is the slow
    part of a card; re-publishing an unchanged run should not redo it)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    stamp = plot_dir / _PLOTS_STAMP
    digest = _facts_digest(facts)
    if stamp.exists() and read_json(stamp).get("digest") == digest:
        names = read_json(stamp)["plots"]
        if all((plot_dir / f"{n}.png").exists() for n in names):
            return ({n: (plot_dir / f"{n}.png").read_bytes() for n in names},
                    {n: plot_dir / f"{n}.png" for n in names})
    pngs = render_plots(facts)
    plots = {}
    for name, png in pngs.items():
        plots[name] = plot_dir / f"{name}.png"
        atomic_write_bytes(plots[name], png)
    for stale in plot_dir.glob("*.png"):
        if stale.stem not in pngs:
            stale.unlink()
    atomic_write_json(stamp, {"digest": digest, "plots": list(pngs)})
    return pngs, plots


def write_export(run: Path, out: Path | None = None, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 template_dir: Path | None = None) -> Export:
    """Build (or refresh) the export folder of `run`: data shards, plots, card, pipeline."""
    layout = resolve_layout(run)
    folder = Path(out) if out is not None else Path(run) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    facts = collect(layout)
    data = {name: write_shards(name, files, folder, max_shard_bytes=max_shard_bytes)
            for name, files in layout.configs.items()}
    for stale in (folder / "data").iterdir():
        if stale.is_dir() and stale.name not in data:
            shutil.rmtree(stale)
    pngs, plots = _write_plots(facts, folder / "plots")
    extra = _copy_reproduction_files(layout, folder)
    card = folder / "README.md"
    atomic_write_bytes(card, render_card(facts, pngs, template_dir=template_dir).encode("utf-8"))
    return Export(folder, card, plots, data, extra, facts)


def write_report(run: Path, out: Path | None = None, *, template_dir: Path | None = None,
                 export: Export | None = None) -> Path:
    """The card's content as one self-contained HTML page (plots inlined), default RUN/report.html.
    Pass the `export` just written for the same run to reuse its facts and plots."""
    from curate.cards.render import render_report

    if export is not None and export.facts is not None:
        facts, pngs = export.facts, {name: path.read_bytes() for name, path in export.plots.items()}
    else:
        facts = collect(resolve_layout(run))
        pngs = render_plots(facts)
    target = Path(out) if out is not None else Path(run) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, render_report(facts, pngs, template_dir=template_dir).encode("utf-8"))
    return target
