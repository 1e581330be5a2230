"""Run one stage over a run directory: plan, skip or resume, fit, execute units, merge, manifest.

Layout of a step directory (`runs/<name>/<NN>-<stage>/`)::

    part-00000.parquet ...   output shards (the stage's table)
    <side>/part-*.parquet    side outputs (e.g. select's negatives)
    _plan.json               the units and the fingerprint they were planned for
    _state.parquet           a global stage's fit result
    _part-00000.json         counters of each finished unit
    _rejects.parquet         malformed rows with file, row, field and reason
    _manifest.json           written last: the step is complete
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from curate import __version__
from curate.executors import Executor, LocalExecutor
from curate.io import (
    MANIFEST,
    PLAN,
    REJECTS,
    STATE,
    atomic_write_json,
    content_fingerprint,
    count_rows,
    input_files,
    part_files,
    plan_parquet_units,
    read_json,
    remove_tree,
    shards_fingerprint,
    write_table,
)
from curate.manifest import Manifest, UnitStats, fingerprint_of
from curate.schemas.tables import SCHEMA_VERSION
from curate.schemas.validate import REJECTS_SCHEMA
from curate.shard import rejects_path, unit_done
from curate.stage import SourceStage, Stage, WorkUnit

log = logging.getLogger("curate")


class StageInputError(ValueError):
    pass


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _input_fingerprint(stage: Stage, input_dir: Path | None) -> tuple[str, dict]:
    if isinstance(stage, SourceStage):
        paths = stage.input_paths()
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"stage {stage.name}: input not found: {', '.join(missing)}")
        fp = content_fingerprint([Path(p) for p in paths])
        return fp, {"kind": "files", "paths": [str(p) for p in paths][:50], "fingerprint": fp}
    if input_dir is None:
        raise StageInputError(f"stage {stage.name} needs an input (a previous step or Parquet files)")
    upstream = Manifest.load(input_dir) if Path(input_dir).is_dir() else None
    if upstream is not None:
        fp = upstream.output_fingerprint
        return fp, {"kind": "step", "step": str(input_dir), "fingerprint": fp}
    if Path(input_dir).is_dir() and (Path(input_dir) / PLAN).exists():
        raise StageInputError(f"input step {input_dir} did not finish; run it again first")
    files = input_files(Path(input_dir))
    fp = shards_fingerprint(files)
    return fp, {"kind": "parquet", "paths": [str(p) for p in files][:50], "fingerprint": fp}


def _check_required_columns(stage: Stage, files: list[Path]) -> None:
    schema = pq.read_schema(files[0])
    needed = list(stage.requires) + [c for c in stage.fit_columns if c not in stage.requires]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise StageInputError(
            f"stage {stage.name}: input {files[0]} lacks column(s) {', '.join(missing)} "
            f"(it has: {', '.join(schema.names)})"
        )


def _plan(stage: Stage, input_dir: Path | None) -> list[WorkUnit]:
    if isinstance(stage, SourceStage):
        return stage.plan()
    files = input_files(Path(input_dir))
    _check_required_columns(stage, files)
    return plan_parquet_units(files)


def _fit(stage: Stage, units: list[WorkUnit], out_dir: Path, executor: Executor | None = None) -> Path | None:
    if not stage.is_global:
        return None
    path = out_dir / STATE
    # An executor with a distributed form of this fit (Ray: partitioned MinHash) writes the state
    # itself, so no single process holds the fit columns; None means "fit here, as usual".
    if not path.exists() and executor is not None and executor.fit_state(stage, units, out_dir) is not None:
        return path
    if not path.exists():
        files = sorted({u.path for u in units})
        present = set(pq.read_schema(files[0]).names) if files else set()
        columns = list(stage.fit_columns) + [c for c in stage.fit_optional_columns if c in present]

        state = stage.fit(_Rescan(files, columns))
        write_table(path, state if state is not None else pa.table({}))
    return path


class _Rescan:
    """The fit columns as record batches; iterable more than once (a fit may need two passes)."""

    def __init__(self, files: list[str], columns: list[str]):
        self.files, self.columns = files, columns

    def __iter__(self):
        for file in self.files:
            yield from pq.ParquetFile(file).iter_batches(batch_size=65536, columns=self.columns)

    def frames(self):
        """The same rows as polars frames, read by polars (no Arrow-to-polars string copy)."""
        for file in self.files:
            scan = pl.scan_parquet(file).select(self.columns)
            for lo in range(0, pq.ParquetFile(file).metadata.num_rows, 65536):
                yield scan.slice(lo, 65536).collect()

    def split(self) -> list[_Rescan]:
        """One rescan per file, in order: a fit can hand files to worker processes."""
        return [_Rescan([f], self.columns) for f in self.files]

    def rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)


def _merge_rejects(out_dir: Path, units: list[WorkUnit]) -> None:
    pieces = [rejects_path(out_dir, u) for u in units if rejects_path(out_dir, u).exists()]
    target = out_dir / REJECTS
    if pieces:
        write_table(target, pa.concat_tables([pq.read_table(p) for p in pieces]).cast(REJECTS_SCHEMA))
    elif not target.exists():
        write_table(target, REJECTS_SCHEMA.empty_table())


def _output_fingerprint(fingerprint: str, out_dir: Path) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for part in part_files(out_dir):
        digest.update(f"{part.name}:{pq.ParquetFile(part).metadata.num_rows}".encode())
    return digest.hexdigest()[:32]


def run_stage(
    stage: Stage,
    *,
    out_dir: Path,
    input_dir: Path | None = None,
    executor: Executor | None = None,
    step: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Manifest:
    """Run ``stage`` from ``input_dir`` into ``out_dir``; skip it when nothing changed, resume it
    from its finished units when it was interrupted."""
    out_dir = Path(out_dir)
    executor = executor or LocalExecutor()
    stage_fp = stage.fingerprint()
    input_fp, input_info = _input_fingerprint(stage, input_dir)
    fingerprint = fingerprint_of(stage_fp, input_fp)

    existing = Manifest.load(out_dir)
    if existing is not None and existing.fingerprint == fingerprint and not force:
        log.info("%s: unchanged, skipped", out_dir.name)
        return existing

    plan_file = out_dir / PLAN
    resumable = (
        not force
        and existing is None
        and plan_file.exists()
        and read_json(plan_file).get("fingerprint") == fingerprint
    )
    if resumable:
        units = [WorkUnit.from_json(u) for u in read_json(plan_file)["units"]]
    else:
        remove_tree(out_dir)
        units = _plan(stage, input_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, {"fingerprint": fingerprint, "units": [u.to_json() for u in units]})

    started_at, t0 = _now(), time.perf_counter()
    state_path = _fit(stage, units, out_dir, executor)
    pending = [u for u in units if not unit_done(out_dir, u)]
    resumed = len(units) - len(pending)
    stats: list[UnitStats] = [
        UnitStats.model_validate(read_json(out_dir / f"_{u.part_name}.json"))
        for u in units
        if u not in pending
    ]
    total_rows = sum(u.rows or 0 for u in units) or None
    bar = tqdm(
        total=total_rows if total_rows else len(units),
        unit="rows" if total_rows else "units",
        desc=step or stage.name,
        disable=not progress,
        dynamic_ncols=True,
        initial=sum(s.rows_in for s in stats) if total_rows else resumed,
    )
    with bar:
        for result in executor.run(stage, pending, out_dir, state_path):
            stats.append(result)
            bar.update(result.rows_in if total_rows else 1)

    _merge_rejects(out_dir, units)
    counts: Counter[str] = Counter()
    side: Counter[str] = Counter()
    for s in stats:
        counts.update(s.counts)
        side.update(s.side_rows)
    manifest = Manifest(
        stage=stage.name,
        step=step or out_dir.name,
        version=stage.version,
        config=stage_fp["config"],
        config_hash=stage_fp["config_hash"],
        input=input_info,
        fingerprint=fingerprint,
        output_fingerprint=_output_fingerprint(fingerprint, out_dir),
        output_table=stage.output_table or stage.table,
        package_version=__version__,
        schema_version=SCHEMA_VERSION,
        rows_in=sum(s.rows_in for s in stats),
        rows_out=sum(s.rows_out for s in stats),
        rows_rejected=sum(s.rows_rejected for s in stats),
        counts=dict(sorted(counts.items())),
        side_outputs=dict(side),
        parts=len(units),
        units_resumed=resumed,
        executor=executor.name,
        workers=executor.workers_for(stage, max(1, len(pending))),
        started_at=started_at,
        finished_at=_now(),
        wall_s=round(time.perf_counter() - t0, 3),
        summary=stage.summarize(counts),
    )
    atomic_write_json(out_dir / MANIFEST, manifest.model_dump())
    for unit in units:  # merged into _rejects.parquet above; the manifest now vouches for it
        rejects_path(out_dir, unit).unlink(missing_ok=True)
    return manifest


def rows_of(step_dir: Path) -> int:
    return count_rows(part_files(step_dir))
