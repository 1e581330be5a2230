"""A global dedup stage's state (one row per trace_id) joined onto each batch cheaply.

The state of a million-trace run has a million rows; a hash join per 8k-row batch would rebuild a
hash table over all of it every batch. Sorting it once by key (in `load_state`) and looking each
batch's keys up by binary search costs O(batch * log N) instead.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa


def sorted_state(state: pa.Table | None, key: str = "trace_id") -> pl.DataFrame | None:
    if state is None:
        return None
    frame = pl.from_arrow(state)
    # fits write their state sorted: a check is ~50x cheaper than re-sorting a million strings
    return frame if frame[key].is_sorted() else frame.sort(key)


def join_sorted(batch: pa.Table, state: pl.DataFrame, key: str = "trace_id") -> tuple[pa.Table, pl.DataFrame]:
    """(`batch` with the state's other columns appended, nulls where the key is absent; those
    columns alone as polars). Row order and row count of `batch` are kept, and its own columns
    are passed through as they are: converting a batch's text to polars and back costs more than
    the join."""
    keys = pl.from_arrow(batch.select([key])).to_series()
    rest = state.drop(key)
    if not state.height:
        values = pl.DataFrame([pl.Series(name, [None] * len(keys), dtype) for name, dtype in rest.schema.items()])
    else:
        pos = state[key].search_sorted(keys, side="left").cast(pl.Int64).clip(0, state.height - 1)
        found = (state[key].gather(pos) == keys).fill_null(False)
        values = rest.gather(pos).with_columns(found.alias("_found")).select(
            [pl.when(pl.col("_found")).then(pl.col(c)).otherwise(None).alias(c) for c in rest.columns])
    table = batch
    for name in values.columns:
        table = table.append_column(name, values[name].to_arrow())
    return table, values


def bounded_map(fn, items, workers: int, in_flight: int | None = None):
    """`map(fn, items)` in order on a thread pool, with at most `in_flight` items pending, so a
    stream of batches is never read ahead without bound. polars, numpy and rensa release the GIL
    for their heavy work, so threads use both cores without copying batches between processes."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1:
        yield from map(fn, items)
        return
    limit = in_flight or 2 * workers
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
