"""Run one work unit: read its slice, call the stage batch by batch, write its shard.

The shard's Parquet file is renamed into place last, after its side outputs, rejects and
counters: its presence is the unit's commit record, so resume skips exactly the finished units.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io import ShardWriter, atomic_write_json, read_json, read_unit_batches, remove_tree, write_table
from curate.manifest import UnitStats
from curate.schemas.tables import PROBLEMS_SCHEMA, TRACES_SCHEMA, conform
from curate.stage import BatchResult, SourceStage, Stage, UnitContext, WorkUnit

_BASE_SCHEMAS = {"traces": TRACES_SCHEMA, "problems": PROBLEMS_SCHEMA}


def meta_path(out_dir: Path, unit: WorkUnit) -> Path:
    return out_dir / f"_{unit.part_name}.json"


def rejects_path(out_dir: Path, unit: WorkUnit) -> Path:
    return out_dir / f"_{unit.part_name}.rejects.parquet"


def part_path(out_dir: Path, unit: WorkUnit) -> Path:
    return out_dir / f"{unit.part_name}.parquet"


def unit_done(out_dir: Path, unit: WorkUnit) -> bool:
    return part_path(out_dir, unit).exists() and meta_path(out_dir, unit).exists()


def output_schema(stage: Stage, input_schema: pa.Schema | None) -> pa.Schema:
    """The declared schema of the stage's output: its input (or base table) plus added fields."""
    out_table = stage.output_table or stage.table
    if isinstance(stage, SourceStage) or input_schema is None or out_table != stage.table:
        base = _BASE_SCHEMAS.get(out_table, pa.schema([]))
    else:
        base = input_schema
    dropped = set(stage.dropped_columns())
    added = {f.name: f for f in stage.output_fields()}
    fields = [added.pop(f.name, f) for f in base if f.name not in dropped]
    fields.extend(added.values())
    return pa.schema(fields, metadata=base.metadata)


class _Shard:
    """A shard writer whose schema is the declared one plus the first batch's extra columns."""

    def __init__(self, path: Path, declared: pa.Schema):
        self.path, self.declared = path, declared
        self.writer: ShardWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            schema = conform(table.slice(0, 0), self.declared).schema
            self.writer = ShardWriter(self.path, schema)
        schema = self.writer.schema
        self.writer.write(conform(table, schema).select(schema.names).cast(schema))

    def close(self) -> int:
        if self.writer is None:  # no rows at all: still an (empty) shard, so resume sees it
            write_table(self.path, self.declared.empty_table())
            return 0
        self.writer.close()
        return self.writer.rows

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _batches(stage: Stage, unit: WorkUnit):
    if isinstance(stage, SourceStage):
        yield from stage.read_unit(unit)
        return
    for table in read_unit_batches(unit, batch_rows=stage.batch_rows):
        result = stage.process(table)
        result.counts["rows_in"] = result.counts.get("rows_in", 0) + table.num_rows
        yield result


def execute_unit(stage: Stage, unit: WorkUnit, out_dir: Path) -> UnitStats:
    out_dir = Path(out_dir)
    if unit_done(out_dir, unit):
        return UnitStats.model_validate(read_json(meta_path(out_dir, unit)))
    started = time.perf_counter()
    scratch = out_dir / "_scratch" / unit.part_name
    stage.unit_context = UnitContext(out_dir=out_dir, unit=unit, scratch=scratch)
    input_schema = None if isinstance(stage, SourceStage) else pq.read_schema(unit.path)
    main = _Shard(part_path(out_dir, unit), output_schema(stage, input_schema))
    sides: dict[str, _Shard] = {}
    rejects: list[pa.Table] = []
    counts: Counter[str] = Counter()
    try:
        for result in _batches(stage, unit):
            _collect(result, main, sides, rejects, counts, out_dir, unit)
        side_rows = {name: shard.close() for name, shard in sides.items()}
        rejected = sum(t.num_rows for t in rejects)
        if rejected:
            write_table(rejects_path(out_dir, unit), pa.concat_tables(rejects))
        rows_in = counts.pop("rows_in", 0)
        stats = UnitStats(
            index=unit.index,
            rows_in=rows_in,
            rows_rejected=rejected,
            counts=dict(counts),
            side_rows=side_rows,
            wall_s=0.0,
        )
        # The main shard commits last; the counters are written just before it.
        stats.rows_out = main.writer.rows if main.writer else 0
        stats.wall_s = round(time.perf_counter() - started, 4)
        atomic_write_json(meta_path(out_dir, unit), stats.model_dump())
        main.close()
        remove_tree(scratch)
        return stats
    except BaseException:
        main.abort()
        for shard in sides.values():
            shard.abort()
        raise
    finally:
        stage.unit_context = None


def _collect(
    result: BatchResult,
    main: _Shard,
    sides: dict[str, _Shard],
    rejects: list[pa.Table],
    counts: Counter[str],
    out_dir: Path,
    unit: WorkUnit,
) -> None:
    main.write(result.table)
    if result.rejects.num_rows:
        rejects.append(result.rejects)
    counts.update(result.counts)
    for name, table in result.side_outputs.items():
        if name not in sides:
            sides[name] = _Shard(out_dir / name / f"{unit.part_name}.parquet", table.schema)
        sides[name].write(table)
