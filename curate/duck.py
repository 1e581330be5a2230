"""DuckDB helpers shared by id hashing, `curate query` and the stages that use SQL."""

from __future__ import annotations

import duckdb
import pyarrow as pa


def fetch_arrow(result: duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation) -> pa.Table:
    """Whole result as an Arrow table, across DuckDB's renames of this call (2.x: to_arrow_table)."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        method = getattr(result, name, None)
        if method is not None:
            out = method()
            return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    raise RuntimeError("this DuckDB version offers no Arrow result method")
