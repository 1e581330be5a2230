"""MinHash clustering as partitioned waves (curate/ray_global.py): the same state table as the
local fit, row for row, in this process and on a real local Ray cluster."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from curate.filters.minhash import MinHashConfig, MinHashDedupStage
from curate.io import plan_parquet_units, write_table
from curate.ray_global import connected_components, minhash_fit, serial_map
from curate.runner import _Rescan

pytestmark = pytest.mark.timeout(300)


def _near_duplicates(root: Path, *, clusters: int = 150, seed: int = 0) -> list[Path]:
    """Texts in families of 1-6 members, each a few word edits from the last (chains), plus an
    empty and a short text; three files of small row groups, so the fit sees many slices."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    texts = []
    for _ in range(clusters):
        words = [rng.choice(vocab) for _ in range(50)]
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            texts.append(" ".join(words))
            words = list(words)
            words[rng.randrange(50)] = rng.choice(vocab)
    texts += ["", "two words"]
    n = len(texts)
    table = pa.table({
        "trace_id": [f"t{i:05d}" for i in range(n)],
        "teacher": [rng.choice(["r1", "qwq"]) for _ in range(n)],
        "prompt": ["p"] * n, "reasoning": texts, "answer": ["7"] * n,
        "math__verdict": [rng.choice(["correct", "incorrect", None]) for _ in range(n)],
    })
    src = root / "in"
    src.mkdir()
    cut = [0, n // 3, 2 * n // 3, n]
    for i in range(3):
        pq.write_table(table.slice(cut[i], cut[i + 1] - cut[i]), src / f"part-{i:05d}.parquet", row_group_size=64)
    return sorted(src.glob("*.parquet"))


def _local_fit(stage: MinHashDedupStage, files: list[Path]) -> pl.DataFrame:
    columns = list(stage.fit_columns) + ["math__verdict"]
    return pl.from_arrow(stage.fit(_Rescan([str(f) for f in files], columns)))


def _counts(stats: dict) -> dict:
    """Fit stats without the wall seconds of its phases (the same keys, other timings)."""
    assert set(stats.get("fit_seconds", {})) == {"signatures", "candidate_reread", "graph_and_survivors"}
    return {k: v for k, v in stats.items() if k != "fit_seconds"}


CONFIGS = [
    MinHashConfig(threads=1),
    MinHashConfig(threads=1, verify_jaccard=False, window=1, prefer_teachers=["qwq"], threshold=0.8),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["verified", "unverified-chain"])
def test_partitioned_fit_equals_the_local_fit(tmp_path, cfg):
    files = _near_duplicates(tmp_path)
    local_stage, dist_stage = MinHashDedupStage(cfg), MinHashDedupStage(cfg)
    expected = _local_fit(local_stage, files)
    units = plan_parquet_units(files, max_rows=128)
    assert len(units) >= 6
    stats = minhash_fit(dist_stage, units, tmp_path / "_fit", tmp_path / "state.parquet", partitions=3)
    got = pl.read_parquet(tmp_path / "state.parquet")
    assert_frame_equal(got, expected, check_dtypes=False)
    assert _counts(dist_stage._fit_stats) == _counts(local_stage._fit_stats)
    assert expected.filter(pl.col("minhash__cluster_size") > 1).height > 100  # the data has duplicates
    assert stats["partitions"] == 3 and not (tmp_path / "_fit").exists()


def test_every_wave_run_twice_gives_the_same_state(tmp_path):
    """A retried task (its worker died after writing) rewrites the same files: nothing doubles."""
    files = _near_duplicates(tmp_path, clusters=60)
    cfg = MinHashConfig(threads=1)
    expected = _local_fit(MinHashDedupStage(cfg), files)

    def twice(fn, args):
        serial_map(fn, args)
        return serial_map(fn, args)

    minhash_fit(MinHashDedupStage(cfg), plan_parquet_units(files, max_rows=100), tmp_path / "_fit",
                tmp_path / "state.parquet", task_map=twice, partitions=2)
    assert_frame_equal(pl.read_parquet(tmp_path / "state.parquet"), expected, check_dtypes=False)


def test_min_label_propagation_with_pointer_jumping_labels_components(tmp_path):
    chain = np.arange(0, 3000)  # one long chain: 0-1-2-...-2999, in shuffled edge order
    edges = [(a, a + 1) for a in chain[:-1]] + [(5000, 5001), (5002, 5001), (7000, 7003)]
    random.Random(1).shuffle(edges)
    src, dst = zip(*edges, strict=True)
    write_table(tmp_path / "kept" / "q=0000" / "all.parquet", pa.table({"src": pa.array(src, pa.int64()),
                                                                         "dst": pa.array(dst, pa.int64())}))

    def wave(_name, fn, args):
        return serial_map(fn, args)

    rounds = connected_components(tmp_path, 4, wave)
    labels = dict(pl.read_parquet(tmp_path / "labels" / f"r={rounds:04d}" / "*.parquet").iter_rows())
    assert labels == {**{int(v): 0 for v in chain}, 5000: 5000, 5001: 5000, 5002: 5000, 7000: 7000, 7003: 7000}
    assert rounds <= 16  # pointer jumping: about log2(3000) rounds, not 3000


def test_fit_on_a_ray_cluster_equals_the_local_fit(tmp_path, ray_engine):
    engine = ray_engine
    files = _near_duplicates(tmp_path, clusters=100)
    cfg = MinHashConfig(threads=1)
    local_stage, ray_stage = MinHashDedupStage(cfg), MinHashDedupStage(cfg)
    expected = _local_fit(local_stage, files)
    step = tmp_path / "05-dedup_minhash"
    step.mkdir()
    path = engine.fit_state(ray_stage, plan_parquet_units(files, max_rows=128), step)
    assert path == step / "_state.parquet"
    assert_frame_equal(pl.read_parquet(path), expected, check_dtypes=False)
    assert _counts(ray_stage._fit_stats) == _counts(local_stage._fit_stats)
    assert engine.last_fit_stats["peak_rss_per_task"] > 0
