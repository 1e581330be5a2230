"""Run a stage on an in-memory table, exactly as the runner would call it, for unit tests."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from curate.schemas.validate import empty_rejects
from curate.stage import BatchResult, Stage


def run_stage_in_memory(stage: Stage, table: pa.Table, *, batch_rows: int | None = None) -> BatchResult:
    """setup -> fit over `fit_columns` (global stages) -> process batch by batch -> teardown."""
    missing = [c for c in stage.requires if c not in table.column_names]
    if missing:
        raise KeyError(f"stage {stage.name} requires columns {missing}")
    stage.setup()
    try:
        if stage.is_global:
            state = stage.fit(iter(table.select(list(stage.fit_columns)).to_batches(max_chunksize=4096)))
            stage.load_state(state)
        size = batch_rows or stage.batch_rows
        outputs, rejects, counts = [], [empty_rejects()], Counter()
        for offset in range(0, max(table.num_rows, 1), size):
            result = stage.process(table.slice(offset, size))
            outputs.append(result.table)
            rejects.append(result.rejects)
            counts.update(result.counts)
    finally:
        stage.teardown()
    return BatchResult(pa.concat_tables(outputs, promote_options="default"), pa.concat_tables(rejects), counts)
