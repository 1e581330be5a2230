"""`curate import`: bring existing trace datasets (or problem sets) into a run.

Reads JSONL, JSON, Parquet or a `datasets` folder; maps columns through a preset (OpenAI
`messages`, ShareGPT `conversations`, AM-Thinking, OpenThoughts, plain `<think>` text) and/or
an explicit mapping; splits reasoning from answer; gives every row stable ids; and sends rows
that cannot be used to the rejects file with file, row, field and reason.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curate.generators.anatomy import merge_separate_reasoning, split_reasoning
from curate.generators.presets import PRESETS, detect_preset, field_expr, preset_exprs
from curate.generators.readers import RawBlock, plan_file_units, read_raw
from curate.schemas.ids import problem_ids, trace_ids
from curate.schemas.tables import DOMAINS, FINISH_REASONS, PROBLEMS_SCHEMA, TRACES_SCHEMA, conform
from curate.schemas.validate import rejects_table, split_valid
from curate.stage import BatchResult, SourceStage, StageConfig, WorkUnit

# Standard names a mapping may target, with the polars type each is cast to.
TARGETS: dict[str, pl.DataType] = {
    "prompt": pl.Utf8, "response": pl.Utf8, "reasoning": pl.Utf8, "answer": pl.Utf8,
    "reference_answer": pl.Utf8, "tests": pl.Utf8, "teacher": pl.Utf8, "domain": pl.Utf8,
    "source": pl.Utf8, "license": pl.Utf8, "sample_index": pl.Int32, "seed": pl.Int64,
    "finish_reason": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "latency_s": pl.Float64, "sampling_params": pl.Utf8, "teacher_revision": pl.Utf8, "system": pl.Utf8,
}


class ImportConfig(StageConfig):
    paths: list[str]
    preset: str = "auto"
    # standard column -> field in the input ("info.think_content" reaches into a struct)
    columns: dict[str, str] = {}
    source: str | None = None  # dataset name; default: the mapped `source` column, else the file stem
    domain: str | None = None  # default: the mapped column, else "code" when tests exist, else "general"
    license: str | None = None
    teacher: str | None = None  # for datasets with one teacher and no teacher column
    keep: list[str] = []  # input fields kept as JSON in trace_metadata (problems: metadata)
    strip_tags: list[str] = []  # annotation tags to remove from responses, e.g. ["DEFINE", "BLOOM"]
    tests_format: str | None = None  # hint for converting `tests` to the canonical JSON

    def model_post_init(self, _context) -> None:
        if self.preset != "auto" and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose auto or one of {', '.join(PRESETS)}")
        unknown = sorted(set(self.columns) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown target column(s) {unknown}; targets are {', '.join(TARGETS)}")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}")


def _json_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Utf8:
        return expr
    if isinstance(dtype, (pl.Struct, pl.List)):
        return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")
    return expr.cast(pl.Utf8)


def _cast_targets(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast mapped columns to their standard types; a value that does not convert is recorded in
    `_bad_field`/`_bad_reason` (first failing column per row) instead of silently becoming null."""
    casts, bad = [], []
    for name in frame.columns:
        if name not in TARGETS:
            continue
        target = TARGETS[name]
        casted = pl.col(name).cast(target, strict=False)
        casts.append(casted.alias(name))
        if frame.schema[name] != target:
            failed = pl.col(name).is_not_null() & casted.is_null()
            reason = pl.format("cannot convert '{}' to {}", pl.col(name).cast(pl.Utf8, strict=False), pl.lit(str(target)))
            bad.append((failed, name, reason))
    field = pl.lit(None, pl.Utf8)
    reason = pl.lit(None, pl.Utf8)
    for failed, name, why in reversed(bad):
        field = pl.when(failed).then(pl.lit(name)).otherwise(field)
        reason = pl.when(failed).then(why).otherwise(reason)
    return frame.with_columns(field.alias("_bad_field"), reason.alias("_bad_reason")).with_columns(casts)


def _type_rejects(frame: pl.DataFrame, rows, file: str) -> tuple[pl.DataFrame, pa.Table | None]:
    mask = frame["_bad_field"].is_not_null()
    if not mask.any():
        return frame.drop("_bad_field", "_bad_reason"), None
    bad = frame.filter(mask)
    bad_rows = [int(r) for r in rows[mask.to_numpy()]]
    rejects = rejects_table(file, bad_rows, bad["_bad_field"].to_list(), bad["_bad_reason"].to_list(),
                            [None] * bad.height)
    return frame.filter(~mask).drop("_bad_field", "_bad_reason"), rejects


class _ImportBase(SourceStage[ImportConfig]):
    config_model = ImportConfig
    batch_rows = 20_000
    _kind = "traces"

    def input_paths(self) -> list[Path]:
        return [Path(p) for p in self.config.paths]

    def plan(self) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        for path in self.input_paths():
            units.extend(plan_file_units(path, len(units)))
        return units

    # -- mapping ---------------------------------------------------------------------
    def _standard_frame(self, raw: pl.DataFrame, file: str) -> pl.DataFrame:
        cfg = self.config
        preset = detect_preset(raw) if cfg.preset == "auto" else cfg.preset
        exprs: dict[str, pl.Expr] = {}
        if raw.width:
            # When the preset's columns are absent from a block, its required fields stay null and
            # validation names them per row.
            with contextlib.suppress(pl.exceptions.PolarsError, KeyError):
                exprs.update(preset_exprs(preset, raw))
            if preset in ("columns", "think"):
                for name in TARGETS:
                    if name in raw.columns:
                        exprs[name] = pl.col(name)
        for target, path in cfg.columns.items():
            try:
                exprs[target] = field_expr(path, raw)
            except KeyError:
                exprs[target] = pl.lit(None, TARGETS[target])  # named per row by validation
        selected = raw.select(
            [_json_text(e, raw.select(e).dtypes[0]).alias(k) if k == "tests" else e.alias(k) for k, e in exprs.items()]
        ) if exprs else pl.DataFrame(height=raw.height)
        frame = _cast_targets(selected)
        if cfg.keep:
            kept = [field_expr(k, raw).alias(k) for k in cfg.keep if k.split(".")[0] in raw.columns]
            if kept:
                frame = frame.with_columns(
                    raw.select(pl.struct(kept).struct.json_encode().alias("_keep")).to_series()
                )
        fixed = {"source": cfg.source, "license": cfg.license, "teacher": cfg.teacher, "domain": cfg.domain}
        for name, value in fixed.items():
            if value is not None:  # an explicit config value wins over a mapped column
                frame = frame.with_columns(pl.lit(value, pl.Utf8).alias(name))
        if "source" not in frame.columns:
            frame = frame.with_columns(pl.lit(Path(file).name.split(".")[0]).alias("source"))
        for name in TARGETS:
            if name not in frame.columns:
                frame = frame.with_columns(pl.lit(None, TARGETS[name]).alias(name))
        if cfg.domain is None:
            frame = frame.with_columns(
                pl.coalesce(pl.col("domain"), pl.when(pl.col("tests").is_not_null()).then(pl.lit("code")),
                            pl.lit("general")).alias("domain")
            )
        return frame

    def _canonical_tests(self, frame: pl.DataFrame) -> pl.DataFrame:
        if self.config.tests_format is None or frame["tests"].null_count() == frame.height:
            return frame
        from curate.verifiers.testspec import to_canonical_tests  # code problems only

        converted = [None if t is None else to_canonical_tests(t, self.config.tests_format)
                     for t in frame["tests"].to_list()]
        return frame.with_columns(pl.Series("tests", converted, pl.Utf8))


class ImportTracesStage(_ImportBase):
    name = "import"
    description = "Import existing traces (JSONL, JSON, Parquet, datasets folder) with a preset or column map."
    example = ("curate import data/am_thinking.jsonl --out runs/am --preset am_thinking --teacher AM-Thinking-v1 "
               "--domain math --license apache-2.0")
    cli = ("import",)

    def _split(self, frame: pl.DataFrame) -> pl.DataFrame:
        if self.config.strip_tags:
            pattern = "</?(?:" + "|".join(self.config.strip_tags) + ")>"
            frame = frame.with_columns(pl.col("response").str.replace_all(pattern, ""))
        have_split = frame["reasoning"].null_count() < frame.height or frame["answer"].null_count() < frame.height
        if have_split:
            return frame.with_columns(pl.lit(True).alias("think_closed"))
        if "separate_reasoning" in frame.columns:
            parts = merge_separate_reasoning(pl.col("separate_reasoning"), pl.col("response"))
        else:
            parts = split_reasoning(pl.col("response"))
        return frame.drop("reasoning", "answer").with_columns(parts.alias("_s")).unnest("_s")

    def read_unit(self, unit: WorkUnit) -> Iterator[BatchResult]:
        seen: pl.Series = pl.Series("trace_id", [], pl.Utf8)
        for block in read_raw(unit, batch_rows=self.batch_rows):
            result, seen = self._convert(block, unit.path, seen)
            yield result

    def _convert(self, block: RawBlock, file: str, seen: pl.Series) -> tuple[BatchResult, pl.Series]:
        counts: Counter[str] = Counter(rows_in=block.rows_read)
        counts["rejected:bad_json"] += block.rejects.num_rows
        if block.frame.height == 0:
            return BatchResult(TRACES_SCHEMA.empty_table(), block.rejects, counts), seen
        frame, type_rejects = _type_rejects(self._standard_frame(block.frame, file), block.rows, file)
        rows = block.rows if type_rejects is None else block.rows[~np.isin(block.rows, type_rejects.column("row").to_numpy())]
        frame = self._canonical_tests(self._split(frame))
        if "_keep" in frame.columns:
            frame = frame.rename({"_keep": "trace_metadata"})
        frame = frame.with_columns(pl.lit("import").alias("backend"))
        table = frame.to_arrow()
        pid = problem_ids(table.column("prompt"))
        tid = trace_ids(pid, table.column("teacher"), table.column("reasoning"), table.column("answer"))
        table = table.append_column("problem_id", pid).append_column("trace_id", tid)
        # A null prompt must not get the hash of "" as its id: leave it null so validation names it.
        frame = pl.from_arrow(table).with_columns(
            pl.when(pl.col("prompt").is_null()).then(None).otherwise(pl.col("problem_id")).alias("problem_id"),
            pl.when(pl.col("prompt").is_null() | (pl.col("reasoning").is_null() & pl.col("answer").is_null()))
            .then(None).otherwise(pl.col("trace_id")).alias("trace_id"),
        )
        good, rejects = split_valid(
            conform(frame.to_arrow(), TRACES_SCHEMA),
            TRACES_SCHEMA,
            file=file,
            row_numbers=pa.array(rows, pa.int64()),
            required=["prompt", "trace_id", "problem_id", "teacher", "source", "domain", "backend"],
            allowed={"domain": DOMAINS, "finish_reason": FINISH_REASONS},
        )
        return _finish_block(good, [block.rejects, type_rejects, rejects], counts, seen, "trace_id", TRACES_SCHEMA)


class ImportProblemsStage(_ImportBase):
    name = "import_problems"
    description = "Import problems (prompt, reference answer, tests) for generation."
    example = ("curate import-problems data/math.jsonl --out runs/gen --map prompt=problem "
               "--map reference_answer=answer --domain math --license mit")
    cli = ("import-problems",)
    table = "problems"

    def read_unit(self, unit: WorkUnit) -> Iterator[BatchResult]:
        seen = pl.Series("problem_id", [], pl.Utf8)
        for block in read_raw(unit, batch_rows=self.batch_rows):
            counts: Counter[str] = Counter(rows_in=block.rows_read)
            counts["rejected:bad_json"] += block.rejects.num_rows
            if block.frame.height == 0:
                yield BatchResult(PROBLEMS_SCHEMA.empty_table(), block.rejects, counts)
                continue
            frame, type_rejects = _type_rejects(self._standard_frame(block.frame, unit.path), block.rows, unit.path)
            rows = block.rows if type_rejects is None else block.rows[
                ~np.isin(block.rows, type_rejects.column("row").to_numpy())]
            frame = self._canonical_tests(frame)
            if "_keep" in frame.columns:
                frame = frame.rename({"_keep": "metadata"})
            table = frame.to_arrow()
            table = table.append_column("problem_id", problem_ids(table.column("prompt")))
            good, rejects = split_valid(
                conform(table, PROBLEMS_SCHEMA).select(PROBLEMS_SCHEMA.names),
                PROBLEMS_SCHEMA,
                file=unit.path,
                row_numbers=pa.array(rows, pa.int64()),
                required=["prompt", "problem_id", "source", "domain"],
                allowed={"domain": DOMAINS},
            )
            result, seen = _finish_block(
                good, [block.rejects, type_rejects, rejects], counts, seen, "problem_id", PROBLEMS_SCHEMA
            )
            yield result


def _finish_block(
    good: pa.Table,
    reject_parts: list[pa.Table | None],
    counts: Counter[str],
    seen: pl.Series,
    key: str,
    schema: pa.Schema,
) -> tuple[BatchResult, pl.Series]:
    """The tail both imports share: count validation rejects by field, drop ids already seen in
    this unit (within the block and in earlier blocks), and return the block's result."""
    # reject_parts[0] is the reader's (bad JSON) rejects, already counted by the caller.
    validation = [r for r in reject_parts[1:] if r is not None]
    for field in (pa.concat_tables(validation).column("field").to_pylist() if validation else []):
        counts[f"rejected:{field}"] += 1
    out = pl.from_arrow(good)
    before = out.height
    out = out.unique(subset=key, keep="first", maintain_order=True).filter(~pl.col(key).is_in(seen.implode()))
    counts[f"duplicate_{key}"] += before - out.height
    seen = pl.concat([seen, out[key]])
    rejects = pa.concat_tables([r for r in reject_parts if r is not None and r.num_rows] or [reject_parts[0]])
    return BatchResult(conform(out.to_arrow(), schema), rejects, counts), seen


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``["prompt=question", "teacher=model"]`` -> ``{"prompt": "question", "teacher": "model"}``."""
    out = {}
    for item in items:
        target, sep, source = item.partition("=")
        if not sep or not target or not source:
            raise ValueError(f"mapping {item!r} must look like TARGET=SOURCE_FIELD")
        out[target.strip()] = source.strip()
    return out


__all__ = ["ImportConfig", "ImportProblemsStage", "ImportTracesStage", "json", "parse_mapping"]
