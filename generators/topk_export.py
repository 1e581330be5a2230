"""Generated log-probs -> a topk-v1 logit cache table (curate/trainer/topk_format.py).

`curate generate` with ``logprobs: k`` already stores ``topk_ids`` / ``topk_logprobs`` /
``token_logprob`` in the cache's own column types and layout, so those columns are reused as they
are (no copy); only ``input_ids`` is new: the prompt's token ids (the prompt exactly as the teacher
saw it, chat template applied) followed by the sampled ``completion_ids``, with
``completion_start`` at the boundary. The result is what `write_cache` writes and `CacheReader`,
the compact codec and divergence scoring read, so sampled teacher distributions need no second
teacher pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.trainer.topk_format import CacheFormatError, CacheMeta, cache_schema


def _flat(arrays: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    values = np.concatenate([np.asarray(a, dtype=np.uint32) for a in arrays]) if len(arrays) else np.zeros(0, np.uint32)
    return values.astype(np.uint32, copy=False), lengths


def generated_cache_table(traces: pa.Table, prompt_ids: Sequence[Sequence[int]], meta: CacheMeta) -> pa.Table:
    """A plain-codec topk-v1 table from generate output rows of one teacher that asked for
    ``logprobs: meta.k``; ``prompt_ids[i]`` are row i's prompt token ids. Rows without log-probs
    (error rows, servers that gave token strings) must be filtered out first."""
    if meta.codec != "plain":
        raise CacheFormatError("generated log-probs are plain top-k; encode_compact the result for the compact codec")
    missing = [c for c in ("trace_id", "problem_id", "completion_ids", "topk_ids", "topk_logprobs", "token_logprob")
               if c not in traces.column_names]
    if missing:
        raise CacheFormatError(f"traces lack {missing}: generate with logprobs=k to get topk-v1 columns")
    if len(prompt_ids) != traces.num_rows:
        raise CacheFormatError(f"{len(prompt_ids)} prompt id lists for {traces.num_rows} trace rows")
    completion = traces.column("completion_ids").combine_chunks()
    null_rows = np.flatnonzero(completion.is_null().to_numpy(zero_copy_only=False))
    if len(null_rows):
        trace = traces.column("trace_id")[int(null_rows[0])].as_py()
        raise CacheFormatError(f"trace {trace} (row {int(null_rows[0])}) has no log-probs; filter such rows out first")
    n = pc.list_value_length(completion).to_numpy().astype(np.int64)
    k_per_row = pc.list_value_length(traces.column("topk_ids").combine_chunks()).to_numpy() // np.maximum(n, 1)
    wrong = np.flatnonzero((k_per_row != meta.k) & (n > 0))
    if len(wrong):
        raise CacheFormatError(f"row {int(wrong[0])} has k={int(k_per_row[wrong[0]])}, the cache says k={meta.k}")
    teachers = set(traces.column("teacher").to_pylist()) if "teacher" in traces.column_names else {meta.teacher}
    if teachers != {meta.teacher}:
        raise CacheFormatError(f"one cache holds one teacher; these rows come from {sorted(teachers)}")

    # input_ids = prompt ++ completion per row, by offset arithmetic on the flat values.
    prompt_values, lp = _flat(prompt_ids)
    completion_values = completion.flatten().to_numpy().astype(np.uint32)
    starts = np.concatenate([[0], np.cumsum(lp + n)])
    out = np.empty(int(starts[-1]), dtype=np.uint32)
    prompt_offsets = np.concatenate([[0], np.cumsum(lp)])
    completion_offsets = np.concatenate([[0], np.cumsum(n)])
    out[np.repeat(starts[:-1], lp) + np.arange(lp.sum()) - np.repeat(prompt_offsets[:-1], lp)] = prompt_values
    out[np.repeat(starts[:-1] + lp, n) + np.arange(n.sum()) - np.repeat(completion_offsets[:-1], n)] = completion_values
    columns = {
        "trace_id": traces.column("trace_id"),
        "problem_id": traces.column("problem_id"),
        "teacher": pa.array([meta.teacher] * traces.num_rows, pa.string()),
        "input_ids": pa.ListArray.from_arrays(pa.array(starts.astype(np.int32)), pa.array(out, pa.uint32())),
        "completion_start": pa.array(lp.astype(np.int32)),
        "topk_ids": traces.column("topk_ids"),
        "topk_logprobs": traces.column("topk_logprobs"),
        "token_logprob": traces.column("token_logprob"),
    }
    return pa.table(columns, schema=cache_schema(meta))
