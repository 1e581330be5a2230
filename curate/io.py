"""Files of a run: atomic writes, shard naming, input planning and fingerprints.

Everything a stage writes lands under a temporary dot-name and is renamed into place, so a reader
(or a resumed run) sees a whole file or none. Bookkeeping files start with `_` and temporaries
with `.`, which Arrow's dataset discovery skips; shards are `part-NNNNN.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.stage import WorkUnit

PART_GLOB = "part-*.parquet"
MANIFEST = "_manifest.json"
PLAN = "_plan.json"
STATE = "_state.parquet"
REJECTS = "_rejects.parquet"
COMPRESSION = "zstd"
# A unit (one output shard) covers about this much uncompressed input: big enough that per-shard
# overhead vanishes, small enough that a killed stage loses little work.
UNIT_TARGET_BYTES = 256 * 1024 * 1024
UNIT_MAX_ROWS = 250_000


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_table(path: Path, table: pa.Table, *, metadata: dict[str, str] | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)


class ShardWriter:
    """Incremental Parquet writer (one row group per batch) that appears atomically on close."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(path)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        with open(self._tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        if self._tmp.exists():
            self._tmp.unlink()


def part_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in Path(step_dir).glob(PART_GLOB) if p.is_file())


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def input_files(path: Path) -> list[Path]:
    """Parquet files of an input: a step dir (its shards), a folder of Parquet, or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    parts = part_files(path)
    if parts:
        return parts
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {path}")
    return files


def plan_parquet_units(files: list[Path], *, max_rows: int = UNIT_MAX_ROWS) -> list[WorkUnit]:
    """Group each file's row groups into units of bounded size (never across files)."""
    units: list[WorkUnit] = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        rows = size = first_row = 0
        offset = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if groups and (rows + rg.num_rows > max_rows or size + rg.total_byte_size > UNIT_TARGET_BYTES):
                units.append(WorkUnit(len(units), str(path), tuple(groups), first_row=first_row, rows=rows))
                groups, rows, size, first_row = [], 0, 0, offset
            groups.append(i)
            rows += rg.num_rows
            size += rg.total_byte_size
            offset += rg.num_rows
        if groups or meta.num_row_groups == 0:
            units.append(WorkUnit(len(units), str(path), tuple(groups), first_row=first_row, rows=rows))
    return units


def read_unit_batches(
    unit: WorkUnit, *, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(unit.path)
    if not unit.row_groups:
        return
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=list(unit.row_groups), columns=columns):
        yield pa.Table.from_batches([batch])


def parquet_schema(files: list[Path]) -> pa.Schema:
    return pq.read_schema(files[0])


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def content_fingerprint(paths: list[Path]) -> str:
    """sha256 over the bytes of external input files: a changed file re-runs its stage."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=str):
        digest.update(str(path.name).encode())
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(sub.relative_to(path)).encode())
                _hash_file(sub, digest)
        else:
            _hash_file(path, digest)
    return digest.hexdigest()[:32]


def _hash_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)


def shards_fingerprint(files: list[Path]) -> str:
    """Cheap fingerprint of Parquet shards a run did not write itself: names, sizes, row counts."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}:{pq.ParquetFile(path).metadata.num_rows}".encode())
    return digest.hexdigest()[:32]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
