"""Schema validation that names the file, row and column of every problem.

`split_valid` is the streaming form: it keeps the good rows and returns the bad ones as reject
rows with a reason, so one malformed row never costs the rest of its batch. `validate` is the
strict form for inputs that must be whole (e.g. a benchmark file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.large_string()),
    ]
)


@dataclass(frozen=True)
class RowError:
    file: str
    row: int  # 0-based row number within the file (line number - 1 for JSONL)
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}, field {self.field!r}: {self.reason}"


class SchemaValidationError(ValueError):
    def __init__(self, errors: Sequence[RowError], total: int | None = None):
        self.errors = list(errors)
        shown = "\n  ".join(str(e) for e in self.errors[:10])
        more = (total or len(self.errors)) - min(len(self.errors), 10)
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid input:\n  {shown}{suffix}")


def rejects_table(
    file: str, rows: Sequence[int], fields: Sequence[str], reasons: Sequence[str], raw: Sequence[str | None]
) -> pa.Table:
    return pa.table(
        {
            "file": pa.array([file] * len(rows), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "field": pa.array(fields, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "raw": pa.array(raw, pa.large_string()),
        },
        schema=REJECTS_SCHEMA,
    )


def empty_rejects() -> pa.Table:
    return REJECTS_SCHEMA.empty_table()


def _row_json(table: pa.Table, index: int) -> str:
    return json.dumps(table.slice(index, 1).to_pylist()[0], default=str, ensure_ascii=False)[:10_000]


def _cast_failures(column: pa.ChunkedArray, target: pa.DataType) -> list[tuple[int, str]]:
    """Rows of ``column`` that do not cast to ``target``: only reached after a whole-column cast
    failed, so the per-element loop runs on the error path, never on good data."""
    failures = []
    for i, value in enumerate(column.to_pylist()):
        try:
            pa.array([value], type=column.type).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            failures.append((i, f"cannot convert {str(value)[:80]!r} to {target}: {exc}"))
    return failures


def split_valid(
    table: pa.Table,
    schema: pa.Schema,
    *,
    file: str,
    row_numbers: pa.Array | None = None,
    required: Sequence[str] | None = None,
    allowed: dict[str, Sequence[str]] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Split ``table`` into rows that conform to ``schema`` and reject rows.

    ``required`` defaults to the schema's non-nullable fields; ``allowed`` maps a column to its
    permitted values. A column missing from the whole file raises, since no row of that file
    could be right; everything else is reported per row.
    """
    n = table.num_rows
    if row_numbers is None:
        row_numbers = pa.array(range(n), pa.int64())
    required = list(required) if required is not None else [f.name for f in schema if not f.nullable]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SchemaValidationError(
            [RowError(file, 0, c, "column is missing from the file") for c in missing]
        )
    bad_reason: dict[int, tuple[str, str]] = {}
    # Required fields are checked in the caller's order, so a row is reported for its root cause
    # (a missing prompt) rather than for what follows from it (no id could be computed).
    ordered = [schema.field(n) for n in required if n in schema.names]
    ordered += [f for f in schema if f.name not in required]
    for field in ordered:
        if field.name not in table.column_names:
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                for i, reason in _cast_failures(column, field.type):
                    bad_reason.setdefault(i, (field.name, reason))
                continue
            table = table.set_column(table.column_names.index(field.name), field.name, column)
        if field.name in required:
            empty = pc.is_null(column)
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(column), ""))
            for i in pc.indices_nonzero(pc.fill_null(empty, True)).to_pylist():
                bad_reason.setdefault(i, (field.name, "required value is missing or empty"))
        if allowed and field.name in allowed:
            ok = pc.is_in(column, value_set=pa.array(list(allowed[field.name]), column.type))
            ok = pc.or_(ok, pc.is_null(column)) if field.name not in required else ok
            for i in pc.indices_nonzero(pc.invert(pc.fill_null(ok, False))).to_pylist():
                value = column[i].as_py()
                bad_reason.setdefault(
                    i, (field.name, f"{value!r} is not one of {', '.join(allowed[field.name])}")
                )
    if not bad_reason:
        return table, empty_rejects()
    bad = sorted(bad_reason)
    rejects = rejects_table(
        file,
        [row_numbers[i].as_py() for i in bad],
        [bad_reason[i][0] for i in bad],
        [bad_reason[i][1] for i in bad],
        [_row_json(table, i) for i in bad],
    )
    keep = pc.invert(pc.is_in(pa.array(range(n), pa.int64()), value_set=pa.array(bad, pa.int64())))
    good = table.filter(keep)
    # columns whose cast failed on some rows cast cleanly once those rows are gone
    for field in schema:
        if field.name in good.column_names and good.column(field.name).type != field.type:
            idx = good.column_names.index(field.name)
            good = good.set_column(idx, field.name, good.column(field.name).cast(field.type))
    return good, rejects


def validate(table: pa.Table, schema: pa.Schema, *, file: str, **kwargs) -> pa.Table:
    """Strict form of `split_valid`: raise naming file, row and field if any row is bad."""
    good, rejects = split_valid(table, schema, file=file, **kwargs)
    if rejects.num_rows:
        errors = [
            RowError(r["file"], r["row"], r["field"], r["reason"]) for r in rejects.slice(0, 10).to_pylist()
        ]
        raise SchemaValidationError(errors, total=rejects.num_rows)
    return good
