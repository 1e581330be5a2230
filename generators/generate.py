"""The `generate` stage: problems in, traces out, from several teachers at once.

For every problem of a batch, every teacher and every sample index ``i < n`` the stage asks for
one completion with seed ``teacher.seed + i``. The (problem, teacher, sample index, seed) key is
the unit of resume: each answer is appended to a JSON-lines log in the unit's scratch folder the
moment the backend returns it, and a killed run reloads that log and asks only for the keys it
lacks. The runner commits a unit's shard atomically when the unit ends, so between the log (keys
done inside an unfinished unit) and the shards (finished units) nothing is asked twice and
nothing is lost. Requests that still fail after the backend's retries are rows too, with
``finish_reason = "error"`` and the reason in ``error``; a resumed run asks for them again
(``retry_errors``), so a server outage costs a re-run, not a hole in the data.

Output rows carry the problem's columns plus the trace anatomy (reasoning / answer split by
`curate.generators.anatomy`, including servers' separate ``reasoning_content``), a normalised
``finish_reason`` (``length`` marks truncation), token counts, latency, the exact sampling
parameters with the request's seed, and the teacher's revision. With ``logprobs: k`` the
completion's token ids and top-k log-probs are stored in the trainer's topk-v1 layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from curate.generators.anatomy import merge_separate_reasoning
from curate.generators.backend_base import Backend, GenRequest, GenResult, build_prompt, make_backend
from curate.generators.teachers import (
    Teacher,
    TeacherConfig,
    TeacherOptions,
    describe,
    resolve_teachers,
    sampling_json,
)
from curate.schemas import PROBLEM_COLUMNS, TRACES_SCHEMA, trace_ids
from curate.stage import BatchResult, Resources, Stage, StageConfig


def _logprob_fields() -> list[pa.Field]:
    """The trainer's topk-v1 column types (curate/trainer/topk_format.py), taken from its plain
    codec so the two never drift: flat ``[positions * k]`` lists per row; ``completion_ids`` has
    the type of the cache's ``input_ids`` (the trainer prepends the prompt's ids)."""
    from curate.trainer.topk_format import CacheMeta, cache_fields

    fields = {f.name: f for f in cache_fields(CacheMeta(teacher="-", revision="-", tokenizer_hash="-", k=1,
                                                        vocab_size=1))}
    return [pa.field("completion_ids", fields["input_ids"].type),
            *(pa.field(name, fields[name].type) for name in ("topk_ids", "topk_logprobs", "token_logprob"))]


LOGPROB_FIELDS = _logprob_fields()

_STOP = ("stop", "eos", "stop_sequence", "end_turn", "stop_token")
_LENGTH = ("length", "max_tokens", "max_length", "model_length")
_FSYNC_EVERY_S = 2.0


class GenerateConfig(TeacherOptions, StageConfig):
    """Teachers plus the options they share (each teacher may override any of them)."""

    teacher: list[str] = Field(
        [],
        description='Teacher as "SPEC [key=value ...]", e.g. "vllm:Qwen/QwQ-32B n=4"; repeat for several.',
    )
    teachers: list[TeacherConfig] = Field(
        [], description="Teachers as mappings (pipeline YAML): spec plus any option."
    )
    batch_problems: int = Field(
        1024, ge=1, description="Problems per batch: every request of a batch is handed to the backends at once."
    )
    replicas: int = Field(
        1, ge=1,
        description=("Copies of the stage run at once, each with its own engines: data parallel, e.g. one per GPU "
                     "(or tensor-parallel group) on Ray. Rate limits and in-flight bounds are split between them."),
    )
    retry_errors: bool = Field(True, description="On resume, ask again for keys whose last attempt failed.")
    progress: bool = Field(True, description="Show a progress bar per teacher.")

    @model_validator(mode="after")
    def _has_teachers(self) -> GenerateConfig:
        if not self.teacher and not self.teachers:
            raise ValueError("no teacher: give --teacher SPEC (vllm:PATH, openai:URL#MODEL, hf:PATH) at least once")
        resolve_teachers(self, self.teacher, self.teachers)  # spec and name errors surface at config time
        return self


def _split_limits(teachers: list[Teacher], replicas: int) -> list[Teacher]:
    """Each of `replicas` copies gets 1/replicas of every teacher's rate limits and in-flight
    bound, so together they keep the limits a server was configured with."""
    if replicas == 1:
        return teachers
    out = []
    for t in teachers:
        o = t.options
        update = {"max_in_flight": max(1, o.max_in_flight // replicas)}
        if o.requests_per_minute is not None:
            update["requests_per_minute"] = o.requests_per_minute / replicas
        if o.tokens_per_minute is not None:
            update["tokens_per_minute"] = o.tokens_per_minute / replicas
        out.append(dataclasses.replace(t, options=o.model_copy(update=update)))
    return out


class ResultLog:
    """Append-only JSON lines of finished requests, one file per batch, in the unit's scratch.
    Each line is flushed to the OS as written (a killed process loses nothing written) and
    fsynced every few seconds; a torn last line (power loss mid-write) is cut off on load."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._synced = time.monotonic()
        self._lock = threading.Lock()

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        records = []
        for line in data[:end].splitlines():
            if line.strip():
                records.append(json.loads(line))
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            if time.monotonic() - self._synced > _FSYNC_EVERY_S:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


class GenerateStage(Stage[GenerateConfig]):
    name = "generate"
    version = "1"
    config_model = GenerateConfig
    description = "Generate reasoning traces for problems from one or more teachers (vLLM, OpenAI-compatible, HF)."
    example = (
        'curate generate runs/math --teacher "vllm:Qwen/QwQ-32B n=4" '
        '--teacher "openai:http://10.0.0.5:8000/v1#deepseek-r1 api_key_env=R1_KEY" '
        "--prompt-template math --temperature 0.6 --max-tokens 32768"
    )
    cli = ("generate",)
    table = "problems"
    output_table = "traces"
    requires = ("problem_id", "prompt")
    resources = Resources(cpus=1.0, stateful=True, max_workers=1)

    def __init__(self, config: GenerateConfig | None = None):
        super().__init__(config)
        self.teachers: list[Teacher] = _split_limits(
            resolve_teachers(self.config, self.config.teacher, self.config.teachers), self.config.replicas
        )
        self.batch_rows = self.config.batch_problems
        gpus = sum(float(t.options.engine_args.get("tensor_parallel_size", 1)) for t in self.teachers
                   if t.kind == "vllm" and not t.options.python) + sum(
            1.0 for t in self.teachers if t.kind == "hf" and t.options.device.startswith("cuda"))
        # One worker per replica: each loads its engines once and keeps its share of the limits.
        self.resources = Resources(cpus=1.0, gpus=gpus, stateful=True, max_workers=self.config.replicas)
        self.backends: list[Backend] = []
        self._unit_key: tuple[str, int] | None = None
        self._batch_index = 0

    # -- declarations --------------------------------------------------------------------
    def output_fields(self) -> list[pa.Field]:
        return list(LOGPROB_FIELDS) if any(t.options.logprobs for t in self.teachers) else []

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "teachers": describe(self.teachers)}

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        self.backends = []
        for teacher in self.teachers:
            backend = make_backend(teacher)
            backend.setup()
            self.backends.append(backend)

    def teardown(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []

    def _log(self) -> ResultLog | None:
        """This batch's log: ``<scratch>/batch-NNNNN.jsonl``. Batches of a unit are read in the
        same order with the same size on every run (the config fixes batch_problems), so the
        index names the same problems again after a kill."""
        ctx = self.unit_context
        if ctx is None:
            return None
        unit_key = (str(ctx.out_dir), ctx.unit.index)
        if unit_key != self._unit_key:
            self._unit_key, self._batch_index = unit_key, 0
        path = Path(ctx.scratch) / f"batch-{self._batch_index:05d}.jsonl"
        self._batch_index += 1
        return ResultLog(path)

    # -- the work ------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> BatchResult:
        if not self.backends:
            self.setup()
        counts: Counter[str] = Counter()
        problems = self._problems(batch, counts)
        requests = {t.name: self._requests(t, problems) for t in self.teachers}
        log = self._log()
        done: dict[tuple, dict[str, Any]] = {}
        if log is not None:
            wanted = {(name, *r.key) for name, reqs in requests.items() for r in reqs}
            for record in log.load():
                key = (record["teacher"], record["problem_id"], record["sample_index"], record["seed"])
                if key in wanted:
                    done[key] = record  # the latest record of a key wins
            if self.config.retry_errors:
                done = {k: r for k, r in done.items() if r.get("error") is None}
            counts["requests_resumed"] += len(done)
        try:
            self._ask(requests, done, log, counts)
        finally:
            if log is not None:
                log.close()
        table = self._traces(problems, requests, done)
        _count_rows(table, counts)
        return BatchResult(table, counts=counts)

    def _problems(self, batch: pa.Table, counts: Counter[str]) -> pl.DataFrame:
        columns = [c for c in PROBLEM_COLUMNS if c in batch.column_names]
        frame = pl.from_arrow(batch.select(columns))
        assert isinstance(frame, pl.DataFrame)
        unique = frame.unique(subset="problem_id", keep="first", maintain_order=True)
        if unique.height < frame.height:
            counts["duplicate_problems_skipped"] += frame.height - unique.height
        return unique.with_row_index("_row")

    def _requests(self, teacher: Teacher, problems: pl.DataFrame) -> list[GenRequest]:
        # Per-request work is inherent here: each request becomes one engine call or HTTP body.
        out = []
        for row, problem_id, prompt in problems.select("_row", "problem_id", "prompt").iter_rows():
            messages, text = build_prompt(teacher, prompt)
            for i in range(teacher.options.n):
                out.append(GenRequest(row, problem_id, i, teacher.options.seed + i, messages, text))
        return out

    def _ask(self, requests: dict[str, list[GenRequest]], done: dict[tuple, dict[str, Any]],
             log: ResultLog | None, counts: Counter[str]) -> None:
        lock = threading.Lock()
        todo = {b.teacher.name: [r for r in requests[b.teacher.name] if (b.teacher.name, *r.key) not in done]
                for b in self.backends}

        def sink(backend: Backend, bar: tqdm) -> Callable[[GenResult], None]:
            name = backend.teacher.name

            def on_result(result: GenResult) -> None:
                record = result.to_record(name)
                if log is not None:
                    log.append(record)
                with lock:
                    done[(name, *result.key)] = record
                    counts["requests"] += 1
                    bar.update(1)

            return on_result

        bars = {b.teacher.name: tqdm(total=len(todo[b.teacher.name]), desc=f"generate {b.teacher.name}",
                                     unit="req", leave=False, disable=not self.config.progress or not todo[b.teacher.name])
                for b in self.backends}
        try:
            http = [b for b in self.backends if b.kind == "openai" and todo[b.teacher.name]]
            local = [b for b in self.backends if b.kind != "openai" and todo[b.teacher.name]]
            failure: list[BaseException] = []
            thread = None
            if http:
                def run_http() -> None:
                    import asyncio

                    from curate.generators.openai_client import run_async

                    async def all_teachers() -> None:
                        await asyncio.gather(*[b.arun(todo[b.teacher.name], sink(b, bars[b.teacher.name]))  # type: ignore[attr-defined]
                                               for b in http])

                    try:
                        run_async(all_teachers())
                    except BaseException as exc:  # re-raised in the calling thread
                        failure.append(exc)

                if local:  # HTTP teachers wait on the network: overlap them with the local engines
                    thread = threading.Thread(target=run_http, name="generate-http", daemon=True)
                    thread.start()
                else:
                    run_http()
            vllm = [b for b in local if b.kind == "vllm"]
            if vllm:  # teachers sharing an engine go into it as one batch
                from curate.generators.backend_vllm import run_together

                run_together([(b, todo[b.teacher.name], sink(b, bars[b.teacher.name])) for b in vllm])
            for backend in local:
                if backend.kind != "vllm":
                    backend.run(todo[backend.teacher.name], sink(backend, bars[backend.teacher.name]))
            if thread is not None:
                thread.join()
            if failure:
                raise failure[0]
        finally:
            for bar in bars.values():
                bar.close()

    # -- rows ----------------------------------------------------------------------------
    def _traces(self, problems: pl.DataFrame, requests: dict[str, list[GenRequest]],
                done: dict[tuple, dict[str, Any]]) -> pa.Table:
        rows: list[dict[str, Any]] = []
        logprob_rows: list[dict[str, Any] | None] = []
        for order, backend in enumerate(self.backends):
            teacher = backend.teacher
            params = teacher.sampling()
            static_meta = {"backend_info": backend.provenance, "base_url": teacher.public_url()}
            for request in requests[teacher.name]:
                record = done.get((teacher.name, *request.key))
                if record is None:  # cannot happen unless a backend skipped a request
                    raise RuntimeError(f"teacher {teacher.name} returned no result for {request.key}")
                meta = {"attempts": record.get("attempts", 1), **(record.get("detail") or {}), **static_meta}
                if record.get("logprobs"):
                    meta["logprobs_k"] = record["logprobs"]["k"]
                rows.append({
                    "_row": request.row, "_order": order, "teacher": teacher.name, "backend": teacher.kind,
                    "teacher_revision": backend.revision, "sample_index": request.sample_index,
                    "seed": request.seed, "sampling_params": sampling_json(params, request.seed),
                    "text": record.get("text"), "reasoning_content": record.get("reasoning_content"),
                    "raw_finish_reason": record.get("finish_reason"), "prompt_tokens": record.get("prompt_tokens"),
                    "completion_tokens": record.get("completion_tokens"), "latency_s": record.get("latency_s"),
                    "created_at": int(record.get("created_at", 0.0) * 1_000_000), "error": record.get("error"),
                    "trace_metadata": json.dumps(meta, sort_keys=True, default=str),
                })
                logprob_rows.append(record.get("logprobs"))
        schema = {
            "_row": pl.UInt32, "_order": pl.Int32, "teacher": pl.Utf8, "backend": pl.Utf8, "teacher_revision": pl.Utf8,
            "sample_index": pl.Int32, "seed": pl.Int64, "sampling_params": pl.Utf8, "text": pl.Utf8,
            "reasoning_content": pl.Utf8, "raw_finish_reason": pl.Utf8, "prompt_tokens": pl.Int32,
            "completion_tokens": pl.Int32, "latency_s": pl.Float64, "created_at": pl.Int64, "error": pl.Utf8,
            "trace_metadata": pl.Utf8,
        }
        results = pl.DataFrame(rows, schema=schema).with_row_index("_result")
        frame = results.join(problems, on="_row", how="left").sort("_row", "_order", "sample_index")
        frame = _anatomy(frame)
        frame = _with_trace_ids(frame)
        table = frame.select(
            *[pl.col(c) for c in TRACES_SCHEMA.names if c in frame.columns], pl.col("_result")
        ).to_arrow()
        order = table.column("_result").to_numpy()
        table = table.drop(["_result"])
        from curate.schemas import conform

        table = conform(table, TRACES_SCHEMA).select(TRACES_SCHEMA.names)
        if self.output_fields():
            for field, column in zip(LOGPROB_FIELDS, _logprob_columns([logprob_rows[i] for i in order]), strict=True):
                table = table.append_column(field, column)
        return table

    def summarize(self, counts: Counter[str]) -> dict[str, Any]:
        requests = counts.get("requests", 0) + counts.get("requests_resumed", 0)
        return {
            "teachers": describe(self.teachers),
            "error_rate": round(counts.get("errors", 0) / requests, 6) if requests else 0.0,
        }


def _count_rows(table: pa.Table, counts: Counter[str]) -> None:
    frame = pl.from_arrow(table.select(["teacher", "finish_reason", "prompt_tokens", "completion_tokens"]))
    assert isinstance(frame, pl.DataFrame)
    counts["rows"] += frame.height
    for reason, n in frame["finish_reason"].value_counts().iter_rows():
        counts[f"finish_{reason}"] += n
        if reason == "error":
            counts["errors"] += n
    counts["prompt_tokens"] += int(frame["prompt_tokens"].fill_null(0).sum())
    counts["completion_tokens"] += int(frame["completion_tokens"].fill_null(0).sum())
    for teacher, n in frame["teacher"].value_counts().iter_rows():
        counts[f"rows_by_teacher.{teacher}"] += n


def _anatomy(frame: pl.DataFrame) -> pl.DataFrame:
    failed = pl.col("error").is_not_null()
    split = merge_separate_reasoning(pl.col("reasoning_content"), pl.col("text"))
    raw = pl.col("raw_finish_reason").str.to_lowercase()
    finish = (
        pl.when(failed).then(pl.lit("error"))
        .when(raw.is_in(list(_STOP))).then(pl.lit("stop"))
        .when(raw.is_in(list(_LENGTH))).then(pl.lit("length"))
        .when(raw == "error").then(pl.lit("error"))
        .otherwise(pl.lit("unknown"))
    )
    frame = frame.with_columns(split.alias("_split"), finish.alias("finish_reason"))
    frame = frame.unnest("_split")
    return frame.with_columns(
        *[pl.when(failed).then(None).otherwise(pl.col(c)).alias(c) for c in ("reasoning", "answer", "think_closed")],
        pl.from_epoch(pl.col("created_at"), time_unit="us").dt.replace_time_zone("UTC").alias("created_at"),
    )


def _with_trace_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Content ids (`curate.schemas.trace_ids`): a re-import of the same trace gets the same id.
    Rows that carry no content (errors) or repeat another row's content (greedy samples) are
    told apart by their key, so every row of the table has its own id."""
    ids = trace_ids(frame["problem_id"].to_arrow(), frame["teacher"].to_arrow(),
                    frame["reasoning"].to_arrow(), frame["answer"].to_arrow())
    frame = frame.with_columns(pl.Series("trace_id", ids))
    keyed = pl.concat_str([pl.col("teacher"), pl.lit("#"), pl.col("sample_index").cast(pl.Utf8), pl.lit("/"),
                           pl.col("seed").cast(pl.Utf8)])
    clash = pl.col("error").is_not_null() | (pl.col("trace_id").is_duplicated() & (pl.col("sample_index") > 0))
    needs = frame.select(clash.alias("c"))["c"]
    if not needs.any():
        return frame
    sub = frame.filter(needs)
    alt = trace_ids(sub["problem_id"].to_arrow(), sub.select(keyed.alias("k"))["k"].to_arrow(),
                    sub["reasoning"].to_arrow(), sub.select(pl.coalesce("answer", "error").alias("a"))["a"].to_arrow())
    positions = pl.Series(np.flatnonzero(needs.to_numpy()))
    return frame.with_columns(frame["trace_id"].scatter(positions, pl.Series(alt)).alias("trace_id"))


def _logprob_columns(records: list[dict[str, Any] | None]) -> list[pa.Array]:
    """Log records' base64 arrays -> the four topk-v1 list columns (null where a row has none)."""
    decoded = [None if r is None else GenResult.from_record({"problem_id": "", "sample_index": 0, "seed": 0,
                                                             "logprobs": r}) for r in records]
    columns = []
    for name, dtype, arrow in (("token_ids", np.uint32, pa.uint32()), ("topk_ids", np.int32, pa.int32()),
                               ("topk_logprobs", np.float16, pa.float16()), ("token_logprob", np.float16, pa.float16())):
        parts = [None if d is None else np.asarray(getattr(d, name)).ravel().astype(dtype) for d in decoded]
        lengths = np.array([0 if p is None else len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = np.concatenate([p for p in parts if p is not None]) if any(p is not None for p in parts) \
            else np.zeros(0, dtype)
        mask = pa.array([p is None for p in parts])
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=arrow), mask=mask))
    return columns
