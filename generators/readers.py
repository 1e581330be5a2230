"""Read raw rows from JSONL, JSON, Parquet and `datasets` folders in bounded blocks.

JSONL is the common case and the one that must scale: a plain file is cut into byte ranges on
line boundaries (one work unit each), each range is parsed block by block with Arrow's
multithreaded JSON reader, and only a block that fails to parse is re-read line by line to find
the bad lines, which become reject rows. Lines are split on "\\n" only (never U+2028).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curate.schemas.validate import empty_rejects, rejects_table
from curate.stage import WorkUnit

BLOCK_BYTES = 16 * 1024 * 1024
UNIT_BYTES = 256 * 1024 * 1024
PARQUET_UNIT_ROWS = 100_000


@dataclass
class RawBlock:
    frame: pl.DataFrame  # parsed rows
    rows: np.ndarray  # row number within the file of each parsed row
    rejects: pa.Table  # unparseable rows (file, row, field, reason, raw)
    rows_read: int


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf_disk"
        raise ValueError(f"{path}: a folder must be a `datasets` save_to_disk folder")
    name = path.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "json"), (".json.gz", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unknown input format (expected .jsonl[.gz], .json[.gz], .parquet or a datasets folder)")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def plan_file_units(path: Path, start_index: int) -> list[WorkUnit]:
    fmt = detect_format(path)
    if fmt == "jsonl" and not path.name.endswith(".gz"):
        return _plan_jsonl(path, start_index)
    if fmt == "parquet":
        meta = pq.ParquetFile(path).metadata
        units, first, groups, rows = [], 0, [], 0
        for i in range(meta.num_row_groups):
            if groups and rows + meta.row_group(i).num_rows > PARQUET_UNIT_ROWS:
                units.append(WorkUnit(start_index + len(units), str(path), tuple(groups), first_row=first, rows=rows))
                first, groups, rows = first + rows, [], 0
            groups.append(i)
            rows += meta.row_group(i).num_rows
        units.append(WorkUnit(start_index + len(units), str(path), tuple(groups), first_row=first, rows=rows))
        return units
    if fmt == "hf_disk":
        import datasets

        n = len(datasets.load_from_disk(str(path)))
        # byte_range holds a row range for `datasets` folders (they are memory-mapped Arrow)
        return [
            WorkUnit(start_index + i, str(path), byte_range=(lo, min(lo + PARQUET_UNIT_ROWS, n)), first_row=lo,
                     rows=min(lo + PARQUET_UNIT_ROWS, n) - lo)
            for i, lo in enumerate(range(0, max(n, 1), PARQUET_UNIT_ROWS))
        ]
    return [WorkUnit(start_index, str(path))]  # gzip JSONL and JSON: one streamed unit per file


def _plan_jsonl(path: Path, start_index: int) -> list[WorkUnit]:
    """Cut at line boundaries about every UNIT_BYTES; count lines so rows are numbered."""
    size = path.stat().st_size
    units, start, first_row = [], 0, 0
    with open(path, "rb") as handle:
        while start < size:
            end = min(start + UNIT_BYTES, size)
            if end < size:
                handle.seek(end)
                tail = handle.readline()
                end += len(tail)
            units.append(WorkUnit(start_index + len(units), str(path), byte_range=(start, end), first_row=first_row))
            first_row += _count_lines(handle, start, end)
            start = end
    return units or [WorkUnit(start_index, str(path), byte_range=(0, 0))]


def _count_lines(handle, start: int, end: int) -> int:
    handle.seek(start)
    remaining, lines, last = end - start, 0, b"\n"
    while remaining > 0:
        chunk = handle.read(min(BLOCK_BYTES, remaining))
        if not chunk:
            break
        lines += chunk.count(b"\n")
        last = chunk[-1:]
        remaining -= len(chunk)
    return lines + (0 if last == b"\n" else 1)


def _line_blocks(path: Path, unit: WorkUnit) -> Iterator[tuple[bytes, int]]:
    """Yield (block of whole lines, row number of its first line)."""
    row = unit.first_row
    with _open(path) as handle:
        if unit.byte_range is not None:
            handle.seek(unit.byte_range[0])
            remaining = unit.byte_range[1] - unit.byte_range[0]
        else:
            remaining = None
        carry = b""
        while True:
            want = BLOCK_BYTES if remaining is None else min(BLOCK_BYTES, remaining)
            chunk = handle.read(want) if want > 0 else b""
            if remaining is not None:
                remaining -= len(chunk)
            if not chunk:
                if carry:
                    yield carry, row
                return
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            block, carry = data[: cut + 1], data[cut + 1 :]
            yield block, row
            row += block.count(b"\n")


def _parse_block(block: bytes, first_row: int, file: str) -> RawBlock:
    buf = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    ends = np.append(newlines, len(block)) if (len(block) and block[-1:] != b"\n") else newlines
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([], dtype=np.int64)
    lengths = ends - starts
    nonblank = lengths > 0
    rows = (first_row + np.arange(len(ends)))[nonblank]
    n_lines = len(ends)
    if not nonblank.any():
        return RawBlock(pl.DataFrame(), rows, empty_rejects(), n_lines)
    try:
        table = pajson.read_json(io.BytesIO(block), parse_options=pajson.ParseOptions(newlines_in_values=False))
        if table.num_rows == len(rows):
            return RawBlock(pl.from_arrow(table), rows, empty_rejects(), n_lines)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return _parse_lines_slowly(block, starts[nonblank], ends[nonblank], rows, file, n_lines)


def _parse_lines_slowly(block, starts, ends, rows, file, n_lines) -> RawBlock:
    """Error path only: find the bad lines of a block Arrow could not parse."""
    good, good_rows, bad_rows, reasons, raw = [], [], [], [], []
    for lo, hi, row in zip(starts.tolist(), ends.tolist(), rows.tolist(), strict=True):
        line = block[lo:hi]
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {type(value).__name__}")
            good.append(value)
            good_rows.append(row)
        except ValueError as exc:
            bad_rows.append(row)
            reasons.append(f"bad JSON: {exc}")
            raw.append(line[:2000].decode("utf-8", "replace"))
    frame = pl.from_dicts(good, infer_schema_length=None, strict=False) if good else pl.DataFrame()
    rejects = rejects_table(file, bad_rows, ["<line>"] * len(bad_rows), reasons, raw) if bad_rows else empty_rejects()
    return RawBlock(frame, np.array(good_rows, dtype=np.int64), rejects, n_lines)


def read_raw(unit: WorkUnit, *, batch_rows: int = 20_000) -> Iterator[RawBlock]:
    path = Path(unit.path)
    fmt = detect_format(path)
    if fmt == "jsonl":
        for block, first_row in _line_blocks(path, unit):
            yield _parse_block(block, first_row, str(path))
    elif fmt == "parquet":
        row = unit.first_row
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=list(unit.row_groups or ())):
            yield RawBlock(pl.from_arrow(pa.Table.from_batches([batch])), np.arange(row, row + batch.num_rows),
                           empty_rejects(), batch.num_rows)
            row += batch.num_rows
    elif fmt == "json":
        with _open(path) as handle:
            try:
                data = json.load(handle)
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(data, dict):  # {"rows": [...]} or column-oriented {"col": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]) else data
        frame = pl.DataFrame(data, strict=False) if isinstance(data, dict) else pl.from_dicts(data, infer_schema_length=None, strict=False)
        for lo in range(0, max(frame.height, 1), batch_rows):
            part = frame.slice(lo, batch_rows)
            yield RawBlock(part, np.arange(lo, lo + part.height), empty_rejects(), part.height)
    elif fmt == "hf_disk":
        import datasets

        lo, hi = unit.byte_range or (0, 0)
        table = datasets.load_from_disk(str(path)).data.table.slice(lo, hi - lo)
        for off in range(0, max(table.num_rows, 1), batch_rows):
            part = table.slice(off, batch_rows)
            yield RawBlock(pl.from_arrow(part), np.arange(lo + off, lo + off + part.num_rows), empty_rejects(),
                           part.num_rows)
