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
            columns = list(stage.fit_columns) + [c for c in stage.fit_optional_columns if c in table.column_names]
            state = stage.fit(table.select(columns).to_batches(max_chunksize=4096))
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


# -- stages used by the runner's own tests (importable by spawned workers and `curate run`) -----
import time as _time  # noqa: E402

import polars as _pl  # noqa: E402

from curate.stage import StageConfig  # noqa: E402


class SlowCopyConfig(StageConfig):
    seconds_per_batch: float = 0.2


class SlowCopyStage(Stage[SlowCopyConfig]):
    """Copies rows, adding `slow__row_len`, slowly enough that a test can kill it mid-stage."""

    name = "slow_copy"
    config_model = SlowCopyConfig
    score_namespace = "slow"
    batch_rows = 100
    requires = ("trace_id",)

    def output_fields(self):
        return [pa.field(self.col("row_len"), pa.int64())]

    def process(self, batch):
        _time.sleep(self.config.seconds_per_batch)
        lengths = _pl.from_arrow(batch).select(_pl.col("trace_id").str.len_bytes().cast(_pl.Int64)).to_series()
        return BatchResult(batch.append_column(self.col("row_len"), lengths.to_arrow()))


class GroupSizeConfig(StageConfig):
    key: str = "problem_id"


class GroupSizeStage(Stage[GroupSizeConfig]):
    """A global stage: how many rows share each row's key (fit over one column, join in process)."""

    name = "group_size"
    config_model = GroupSizeConfig
    score_namespace = "group"
    fit_columns = ("problem_id",)

    def output_fields(self):
        return [pa.field(self.col("size"), pa.int64())]

    def fit(self, batches):
        frames = [_pl.from_arrow(pa.Table.from_batches([b])) for b in batches]
        counts = _pl.concat(frames).group_by(self.config.key).len(name="n") if frames else None
        return counts.with_columns(_pl.col("n").cast(_pl.Int64)).to_arrow() if counts is not None else None

    def process(self, batch):
        state = _pl.from_arrow(self.state)
        out = _pl.from_arrow(batch).join(state, on=self.config.key, how="left", maintain_order="left")
        out = out.rename({"n": self.col("size")})
        return BatchResult(out.to_arrow(), counts=Counter({"groups_seen": out[self.config.key].n_unique()}))
