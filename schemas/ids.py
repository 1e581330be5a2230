"""Stable content-hash ids: the same problem from two sources, or a re-run, gets the same id.

Hashing runs in DuckDB (vectorised, and its sha256 is stable across versions and platforms,
unlike polars' `hash`). Text is normalised first (Unicode NFKC, runs of whitespace collapsed,
ends stripped), so formatting noise does not split one problem into two ids.
"""

from __future__ import annotations

import threading

import duckdb
import polars as pl
import pyarrow as pa

from curate.duck import fetch_arrow

ID_HEX_CHARS = 16  # 64 bits: about 3e-6 chance of any collision among 10M ids
_UNIT_SEP = "\x1f"
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(config={"threads": 1})
        _local.con = con
    return con


def normalise_text(expr: pl.Expr) -> pl.Expr:
    return (
        expr.fill_null("")
        .str.normalize("NFKC")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def stable_hash(parts: list[pa.Array | pa.ChunkedArray], *, prefix: str) -> pa.Array:
    """Hex id per row from the normalised text of ``parts`` (same length arrays)."""
    frame = pl.DataFrame({f"c{i}": pl.Series(p).cast(pl.Utf8) for i, p in enumerate(parts)})
    joined = frame.select(
        pl.concat_str(
            [pl.lit(prefix), *[normalise_text(pl.col(c)) for c in frame.columns]],
            separator=_UNIT_SEP,
        ).alias("k")
    ).to_arrow()
    con = _connection()
    con.register("_ids_input", joined)
    try:
        out = fetch_arrow(
            con.sql(f"select substr(sha256(k), 1, {ID_HEX_CHARS}) as id from _ids_input")
        )
    finally:
        con.unregister("_ids_input")
    return out.column("id").combine_chunks().cast(pa.string())


def problem_ids(prompts: pa.Array | pa.ChunkedArray) -> pa.Array:
    return stable_hash([prompts], prefix="problem/v1")


def trace_ids(
    problem_ids_: pa.Array | pa.ChunkedArray,
    teachers: pa.Array | pa.ChunkedArray,
    reasoning: pa.Array | pa.ChunkedArray,
    answers: pa.Array | pa.ChunkedArray,
) -> pa.Array:
    return stable_hash([problem_ids_, teachers, reasoning, answers], prefix="trace/v1")
