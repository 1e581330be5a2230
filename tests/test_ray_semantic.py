"""Semantic dedup as waves of tasks (curate/ray_semantic.py): the same state as the local fit of
`SemanticDedupStage`, on the exact path and on the k-means path, in this process and on Ray."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from curate.filters.semantic import SemanticConfig, SemanticDedupStage
from curate.io import plan_parquet_units
from curate.ray_semantic import semantic_fit
from curate.runner import _Rescan

pytestmark = pytest.mark.timeout(300)

TOPICS = ["triangle", "circle", "prime", "integer", "polynomial", "probability", "sequence", "matrix",
          "square", "function", "digit", "angle", "coin", "dice", "graph", "root"]


def _corpus(root: Path, *, problems: int = 90, seed: int = 0) -> list[Path]:
    """Problems (some near-copies of an earlier one, a word changed), each answered by 1-4 traces
    spread over three files of small row groups, so a problem's rows land in several slices."""
    rng = random.Random(seed)
    prompts = []
    for i in range(problems):
        if prompts and rng.random() < 0.3:
            words = rng.choice(prompts).split()
            words[rng.randrange(len(words))] = rng.choice(TOPICS)
            prompts.append(" ".join(words))
        else:
            words = [rng.choice(TOPICS) for _ in range(12)] + [f"n{i}", str(rng.randrange(1000))]
            prompts.append(" ".join(words))
    rows = []
    for p, prompt in enumerate(prompts):
        for j in range(rng.choice([1, 2, 4])):
            rows.append({"trace_id": f"t{p:03d}-{j}", "problem_id": f"p{p:03d}", "prompt": prompt,
                         "reasoning": f"think {rng.choice(TOPICS)} " * rng.randrange(1, 5),
                         "answer": str(rng.randrange(9)),
                         "math__verdict": rng.choice(["correct", "incorrect", None])})
    rows.append(dict(rows[3]))  # a trace_id seen twice: the state keeps its first row
    rng.shuffle(rows)
    table = pa.Table.from_pylist(rows)
    src = root / "in"
    src.mkdir()
    n = table.num_rows
    cut = [0, n // 3, 2 * n // 3, n]
    for i in range(3):
        pq.write_table(table.slice(cut[i], cut[i + 1] - cut[i]), src / f"part-{i:05d}.parquet", row_group_size=40)
    return sorted(src.glob("*.parquet"))


def _local(cfg: SemanticConfig, files: list[Path]) -> tuple[pl.DataFrame, dict]:
    stage = SemanticDedupStage(cfg)
    columns = list(stage.fit_columns) + ["math__verdict"]
    state = pl.from_arrow(stage.fit(_Rescan([str(f) for f in files], columns)))
    return state.sort("trace_id"), stage._fit_stats


def _distributed(cfg: SemanticConfig, files: list[Path], tmp: Path, **kwargs) -> tuple[pl.DataFrame, dict, dict]:
    stage = SemanticDedupStage(cfg)
    units = plan_parquet_units(files, max_rows=40)
    stats = semantic_fit(stage, units, tmp / "_fit", tmp / "state.parquet", **kwargs)
    return pl.read_parquet(tmp / "state.parquet").sort("trace_id"), stage._fit_stats, stats


CASES = {
    # exact search over all units (the demo on Ray runs this path with MiniLM,
    # tests/test_ray_executor.py; the static model keeps this file fast)
    "exact-prompt": SemanticConfig(field="prompt", threshold=0.9, model="static"),
    # one unit per trace (some reasoning texts are equal), exact path
    "exact-response": SemanticConfig(field="response", threshold=0.97, model="static"),
    # k-means clusters, each unit searched in its 2 nearest; the corpus is under 64 x clusters
    # points, so the sample is every vector, as faiss's own sample in the local fit
    "kmeans-nprobe2": SemanticConfig(field="prompt", threshold=0.9, exact_max=10, clusters=5, nprobe=2,
                                     model="static"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_partitioned_semantic_fit_equals_the_local_fit(tmp_path, name):
    cfg = CASES[name]
    files = _corpus(tmp_path)
    expected, local_stats = _local(cfg, files)
    got, fit_stats, stats = _distributed(cfg, files, tmp_path, partitions=3)
    assert got.columns == expected.columns and got.height == expected.height
    assert got.height == expected["trace_id"].n_unique()  # one row per trace_id, the duplicate once
    # Clusters and survivors exactly; similarities to float rounding (FAISS batch shapes differ).
    assert_frame_equal(got.drop("semantic__nn_similarity"), expected.drop("semantic__nn_similarity"))
    assert_frame_equal(got.select("semantic__nn_similarity"), expected.select("semantic__nn_similarity"),
                       abs_tol=1e-5)
    assert fit_stats == local_stats
    assert local_stats["units_in_duplicate_clusters"] >= 10  # the corpus does have near-copies
    waves = stats["waves"]
    assert ("search" in waves) == name.startswith("kmeans") and ("exact" in waves) != name.startswith("kmeans")
    assert waves["embed"]["tasks"] == len(plan_parquet_units(files, max_rows=40))
    assert not (tmp_path / "_fit").exists()


def test_kmeans_path_trains_on_a_sample_and_still_links_exact_copies(tmp_path):
    """Above 64 x clusters units the centroids come from a hash sample of the vectors (the driver
    never holds them all); exact copies share a cluster whatever the centroids, so they link."""
    files = _corpus(tmp_path, problems=200, seed=3)
    cfg = SemanticConfig(field="prompt", threshold=0.999, exact_max=10, clusters=2, model="static")
    got, fit_stats, stats = _distributed(cfg, files, tmp_path, partitions=2)
    assert stats["units"] == 200 and stats["clusters"] == 2
    frame = pl.concat([pl.read_parquet(f) for f in files])
    copies = frame.unique("problem_id").group_by("prompt").agg(pl.col("problem_id").sort()).filter(
        pl.col("problem_id").list.len() > 1)
    assert copies.height >= 1
    by_trace = frame.join(got, on="trace_id").unique("problem_id")
    for ids in copies["problem_id"].to_list():
        cluster = by_trace.filter(pl.col("problem_id").is_in(ids))["semantic__cluster_id"]
        assert cluster.n_unique() == 1, ids


def test_semantic_fit_on_a_ray_cluster_equals_the_local_fit(tmp_path, ray_engine):
    cfg = CASES["kmeans-nprobe2"]
    files = _corpus(tmp_path, seed=5)
    expected, local_stats = _local(cfg, files)
    step = tmp_path / "06-dedup_semantic"
    step.mkdir()
    ray_stage = SemanticDedupStage(cfg)
    path = ray_engine.fit_state(ray_stage, plan_parquet_units(files, max_rows=100), step)
    got = pl.read_parquet(path).sort("trace_id")
    assert_frame_equal(got, expected)  # the k-means path searches identical batches: bit for bit
    assert ray_stage._fit_stats == local_stats
    assert ray_engine.last_fit_stats["waves"]["search"]["tasks"] == ray_engine.last_fit_stats["partitions"]
