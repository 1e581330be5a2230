"""Arrow schemas for the `problems` and `traces` tables (version SCHEMA_VERSION).

A trace row carries its problem's columns too (prompt, reference answer, tests, ...). Reasoning
datasets are shipped that way (AM-Thinking, OpenThoughts), every stage then finds what it needs
in one batch with no join on the hot path, and Parquet's dictionary encoding stores the repeated
prompt of a problem's many traces cheaply. The `problems` table is the distinct problem columns.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

DOMAINS = ("math", "code", "science", "general")
FINISH_REASONS = ("stop", "length", "error", "unknown")

_TEXT = pa.large_string()

PROBLEMS_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("prompt", _TEXT, nullable=False),
        pa.field("reference_answer", _TEXT),
        # JSON text: {"format": "stdin_stdout"|"functional"|"assert", ...}; one column type for
        # every test format found in real data keeps the schema stable across sources.
        pa.field("tests", _TEXT),
        pa.field("metadata", pa.string()),
        pa.field("license", pa.string()),
    ],
    metadata={"curate.table": "problems", "curate.schema_version": SCHEMA_VERSION},
)

PROBLEM_COLUMNS = tuple(PROBLEMS_SCHEMA.names)

_TRACE_FIELDS = [
    pa.field("trace_id", pa.string(), nullable=False),
    pa.field("teacher", pa.string(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("teacher_revision", pa.string()),
    pa.field("sample_index", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("sampling_params", pa.string()),
    pa.field("reasoning", _TEXT),
    pa.field("answer", _TEXT),
    # True: the thinking section was closed; False: opened and never closed (ran out of tokens);
    # null: the teacher used no thinking markers.
    pa.field("think_closed", pa.bool_()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
    pa.field("latency_s", pa.float64()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
    pa.field("error", pa.string()),
    pa.field("trace_metadata", pa.string()),
]

TRACE_ONLY_COLUMNS = tuple(f.name for f in _TRACE_FIELDS)

TRACES_SCHEMA = pa.schema(
    [_TRACE_FIELDS[0], *PROBLEMS_SCHEMA, *_TRACE_FIELDS[1:]],
    metadata={"curate.table": "traces", "curate.schema_version": SCHEMA_VERSION},
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with ``schema``'s columns first (in order, cast, missing ones null)
    followed by any extra columns (score columns) unchanged."""
    columns, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, field.type)
        columns.append(col)
        fields.append(field.with_nullable(True))
    for name in table.column_names:
        if name not in schema.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
