"""Near-dup accuracy floor on labelled pairs built from real text (see filters/dedup_eval.py)."""

import polars as pl
import pyarrow as pa
import pytest

from curate.filters import dedup_eval
from curate.filters.minhash import MinHashConfig, MinHashDedupStage
from curate.testing import run_stage_in_memory

if not (dedup_eval.DATA / "traces").exists():
    pytest.skip(f"real data not found under {dedup_eval.DATA}", allow_module_level=True)


def test_edited_copy_applies_about_the_requested_share_of_edits():
    import numpy as np

    text = " ".join(f"w{i}" for i in range(2000))
    copy = dedup_eval.edited_copy(text, 0.05, np.random.default_rng(0), ["x"])
    changed = sum(a != b for a, b in zip(text.split(" "), copy.split(" "), strict=False))
    assert copy != text and changed > 0.02 * 2000


def test_minhash_default_threshold_precision_and_recall_floor():
    originals = dedup_eval.real_traces(limit_per_source=60, seed=1)
    rows, labels = dedup_eval.labelled_set(originals, seed=1)
    table = pa.table({"trace_id": rows["id"].to_list(), "teacher": ["t"] * rows.height,
                      "prompt": [""] * rows.height, "reasoning": rows["text"].to_list(),
                      "answer": [""] * rows.height})
    out = run_stage_in_memory(MinHashDedupStage(MinHashConfig()), table).table
    clusters = pl.Series(out.column("minhash__cluster_id").to_pylist())
    got = dedup_eval.precision_recall(rows, labels, clusters, source_threshold=0.7)
    assert got["dup_pairs"] > 40
    assert got["precision"] >= 0.98, got
    assert got["recall"] >= 0.85, got
    verbatim = dict((rate, detected) for rate, detected, _ in got["per_rate"])[0.0]
    assert verbatim == 1.0  # formatting noise only: always found
