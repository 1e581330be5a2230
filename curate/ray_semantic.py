"""Semantic dedup at scale: the fit of `SemanticDedupStage` (filters/semantic.py) as waves of tasks
over files in a shared work folder (`<step>/_fit/`), so no process holds every vector.

The local fit embeds each distinct unit (a problem for `field: prompt`, a trace for `response`),
searches neighbours with FAISS (exact up to `exact_max` units; above, SemDeDup's spherical k-means
clusters and exact search inside each), links pairs at or above the threshold and keeps one
survivor per connected component. Here:

1. **keys** (one task per input slice): each row's unit key, owner row and `verified` flag,
   hash-partitioned on the key; **units** (one per key partition): a unit's id (`uid`) is the
   global row of its first occurrence, so uids sort exactly as the local fit numbers its units.
2. **embed** (one task per slice): only the units whose first occurrence lies in the slice, with
   the same `embed_texts` call (the model is loaded once per reused worker process).
3. **search**, exact path: one task per slice searches its vectors against all of them. That holds
   at most `exact_max` vectors (the local path's own bound). K-means path: centroids are trained
   in one task on a sample read from every slice (every vector when the corpus is at most
   `64 x clusters`, the sample faiss itself would use), then each slice task assigns its vectors
   and routes them to cluster partitions, and a partition task searches each of its clusters
   exactly as the local loop does, over the same members and queries in the same order.
4. **components** over the linked pairs: min-label propagation with pointer jumping
   (`ray_global.connected_components`); **survivors** per label partition; the **state** per key
   partition, then the first row per trace_id in one streamed DuckDB pass.

Results equal the local fit's (tests/test_ray_semantic.py): cluster ids and survivors exactly;
`nn_similarity` to float rounding on the exact path, where a slice's queries go through FAISS in
other batch sizes than in the one-process search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.ray_global import (
    FitWaves,
    TaskMap,
    _assemble_state,
    _peak_rss,
    _scan,
    _write,
    connected_components,
    serial_map,
)
from curate.stage import Stage, WorkUnit

_SUB_BATCH = 65536  # rows per read; the local fit streams 64k-row batches too
_KMEANS_POINTS = 64  # faiss max_points_per_centroid in the local fit: its training sample size


def _text_expr(field: str) -> pl.Expr:
    from curate.filters.text_norm import response_text

    return pl.col("prompt") if field == "prompt" else response_text(pl.col("reasoning"), pl.col("answer"))


def _key(stage: Stage) -> str:
    return "problem_id" if stage.config.field == "prompt" else "trace_id"


def _vectors(frame: pl.DataFrame) -> np.ndarray:
    """float32 [rows, dim] from a fixed-size-list `vector` column (zero-copy where possible)."""
    column = frame["vector"].to_arrow()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return np.ascontiguousarray(flat.reshape(len(column), -1))


def _with_vectors(frame: pl.DataFrame, vectors: np.ndarray) -> pl.DataFrame:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1] if vectors.size else 1)
    return frame.with_columns(pl.Series("vector", column))


def _read_vectors(pattern: Path) -> pl.DataFrame:
    scan = _scan(pattern)
    return (scan.collect().sort("uid") if scan is not None
            else pl.DataFrame(schema={"uid": pl.Int64, "part": pl.Int64}))


# -- wave 1: keys, then units ---------------------------------------------------------------------
def keys_task(stage: Stage, work: str, slice_: tuple, columns: list[str], parts: int) -> dict:
    sid, path, groups, base, _rows = slice_
    key, work_dir = _key(stage), Path(work)
    from curate.filters.verdicts import verified_expr

    pieces, row = [], base
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_SUB_BATCH, row_groups=list(groups), columns=columns):
        frame = pl.from_arrow(pa.Table.from_batches([batch]))
        pieces.append(frame.select(
            pl.int_range(row, row + frame.height, dtype=pl.Int64).alias("row"), "trace_id",
            pl.col(key).alias("key"), verified_expr(frame.columns).alias("ok"),
            _text_expr(stage.config.field).fill_null("").str.len_chars().cast(pl.Int64).alias("len")))
        row += frame.height
    rows = pl.concat(pieces) if pieces else pl.DataFrame(
        schema={"row": pl.Int64, "trace_id": pl.Utf8, "key": pl.Utf8, "ok": pl.Boolean, "len": pl.Int64})
    rows = rows.with_columns((pl.col("key").hash(seed=17) % parts).cast(pl.Int64).alias("part"))
    firsts = rows.group_by("key", "part").agg(pl.col("row").min(), pl.col("ok").any(),
                                              pl.col("len").sort_by("row").first())
    for (p,), group in rows.select("row", "trace_id", "key", "part").partition_by("part", as_dict=True).items():
        _write(work_dir / "owners" / f"p={p:04d}" / f"s={sid:05d}.parquet", group.drop("part"))
    for (p,), group in firsts.partition_by("part", as_dict=True).items():
        _write(work_dir / "keys" / f"p={p:04d}" / f"s={sid:05d}.parquet", group)
    return {"rows": row - base, "peak_rss": _peak_rss()}


def units_task(work: str, p: int, bases: list[int]) -> dict:
    """Distinct units of key partition p: uid = first row, verified if any row is; also filed by
    the slice that holds the first row (so an embed task reads only its own units)."""
    work_dir = Path(work)
    scan = _scan(work_dir / "keys" / f"p={p:04d}" / "*.parquet")
    if scan is None:
        return {"units": 0, "peak_rss": _peak_rss()}
    units = (scan.group_by("key", "part").agg(pl.col("row").min().alias("uid"), pl.col("ok").any(),
                                              pl.col("len").sort_by("row").first())
             .sort("uid").collect())
    _write(work_dir / "units" / f"p={p:04d}.parquet", units)
    owner = np.searchsorted(np.asarray(bases, np.int64), units["uid"].to_numpy(), side="right") - 1
    for (s,), group in units.with_columns(pl.Series("_s", owner)).partition_by("_s", as_dict=True).items():
        _write(work_dir / "units_by_slice" / f"s={s:05d}" / f"p={p:04d}.parquet", group.drop("_s"))
    return {"units": units.height, "peak_rss": _peak_rss()}


# -- wave 2: embeddings -------------------------------------------------------------------------------
def embed_task(stage: Stage, work: str, slice_: tuple, columns: list[str]) -> dict:
    from curate.filters.embeddings import embed_texts

    sid, path, groups, base, _rows = slice_
    cfg, work_dir = stage.config, Path(work)
    mine = _scan(work_dir / "units_by_slice" / f"s={sid:05d}" / "*.parquet")
    if mine is None:
        return {"embedded": 0, "peak_rss": _peak_rss()}
    mine = mine.select("uid", "part").collect().sort("uid")
    wanted = mine["uid"].to_numpy()
    texts, row = [], base
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_SUB_BATCH, row_groups=list(groups), columns=columns):
        a, b = np.searchsorted(wanted, [row, row + batch.num_rows])
        if b > a:
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            texts += frame.select(_text_expr(cfg.field).fill_null("")).to_series().gather(wanted[a:b] - row).to_list()
        row += batch.num_rows
    vectors = embed_texts(texts, model=cfg.model, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
                          max_chars=cfg.max_chars)
    _write(work_dir / "vectors" / f"s={sid:05d}.parquet", _with_vectors(mine, vectors))
    return {"embedded": len(texts), "peak_rss": _peak_rss()}


# -- wave 3a: exact search (n <= exact_max) --------------------------------------------------------------
def exact_task(work: str, sid: int, k: int, threshold: float) -> dict:
    from curate.filters.semantic import _search

    work_dir = Path(work)
    everything = _read_vectors(work_dir / "vectors" / "*.parquet")  # bounded by exact_max
    mine = pl.read_parquet(work_dir / "vectors" / f"s={sid:05d}.parquet").sort("uid")
    if not mine.height:
        return {"pairs": 0, "peak_rss": _peak_rss()}
    src, dst, sim, best = _search(_vectors(everything), everything["uid"].to_numpy(), _vectors(mine),
                                  mine["uid"].to_numpy(), k, threshold)
    _write(work_dir / "kept" / f"s={sid:05d}.parquet", pl.DataFrame({"src": src, "dst": dst, "sim": sim}))
    _write_best(work_dir, f"s={sid:05d}", mine.select("uid", "part").with_columns(pl.Series("best", best)))
    return {"pairs": len(src), "peak_rss": _peak_rss()}


def _write_best(work_dir: Path, name: str, frame: pl.DataFrame) -> None:
    for (p,), group in frame.partition_by("part", as_dict=True).items():
        _write(work_dir / "best" / f"p={p:04d}" / f"{name}.parquet", group.drop("part"))


# -- wave 3b: k-means path (n > exact_max) ----------------------------------------------------------------
def sample_task(work: str, sid: int, rate: float) -> dict:
    """The slice's share of the k-means training sample: every vector when rate >= 1, else a
    deterministic hash sample of uids."""
    work_dir = Path(work)
    mine = pl.read_parquet(work_dir / "vectors" / f"s={sid:05d}.parquet").sort("uid")
    if rate < 1:
        mine = mine.filter((pl.col("uid").hash(seed=29) % 1_000_003) < int(rate * 1_000_003))
    _write(work_dir / "sample" / f"s={sid:05d}.parquet", mine.select("uid", "vector"))
    return {"sampled": mine.height, "peak_rss": _peak_rss()}


def kmeans_task(work: str, n_clusters: int, seed: int) -> dict:
    """Spherical k-means with the local fit's parameters, on the sample (in uid order)."""
    import faiss

    work_dir = Path(work)
    sample = _vectors(_read_vectors(work_dir / "sample" / "*.parquet"))
    kmeans = faiss.Kmeans(sample.shape[1], n_clusters, niter=10, seed=seed, spherical=True,
                          max_points_per_centroid=_KMEANS_POINTS)
    kmeans.train(sample)
    np.save(work_dir / "centroids.npy", kmeans.centroids)
    return {"sample": len(sample), "peak_rss": _peak_rss()}


def assign_task(work: str, sid: int, probes: int, parts: int) -> dict:
    """Each vector's `probes` nearest centroids (the first is its home cluster); vectors travel to
    the partition of each cluster they are a member of (home) or a query of (every probe)."""
    import faiss

    work_dir = Path(work)
    mine = pl.read_parquet(work_dir / "vectors" / f"s={sid:05d}.parquet").sort("uid")
    if not mine.height:
        return {"peak_rss": _peak_rss()}
    centroids = np.load(work_dir / "centroids.npy")
    index = faiss.IndexFlatIP(centroids.shape[1])  # what faiss.Kmeans(spherical=True) searches
    index.add(centroids)
    assign = index.search(_vectors(mine), probes)[1]
    for probe in range(probes):
        frame = mine.with_columns(pl.Series("cluster", assign[:, probe].astype(np.int64)),
                                  pl.lit(probe == 0).alias("home"))
        for (q,), group in frame.with_columns((pl.col("cluster") % parts).alias("_q")).partition_by(
                "_q", as_dict=True).items():
            _write(work_dir / "routed" / f"q={q:04d}" / f"s={sid:05d}-{probe:03d}.parquet", group.drop("_q"))
    return {"peak_rss": _peak_rss()}


def cluster_search_task(work: str, q: int, k: int, threshold: float) -> dict:
    """Exact search inside every cluster of partition q: members are the cluster's home vectors,
    queries every vector that probes it, both in uid order, as in `similar_pairs`."""
    from curate.filters.semantic import _search

    work_dir = Path(work)
    scan = _scan(work_dir / "routed" / f"q={q:04d}" / "*.parquet")
    if scan is None:
        return {"pairs": 0, "peak_rss": _peak_rss()}
    routed = scan.collect().sort("cluster", "uid")
    vectors, uids = _vectors(routed), routed["uid"].to_numpy()
    clusters, home = routed["cluster"].to_numpy(), routed["home"].to_numpy()
    bounds = np.flatnonzero(np.diff(clusters)) + 1
    src, dst, sim, best_uid, best = [], [], [], [], []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(clusters)], strict=True):
        members = np.flatnonzero(home[lo:hi]) + lo
        if len(members) == 0:
            continue
        s, d, v, b = _search(vectors[members], uids[members], vectors[lo:hi], uids[lo:hi], k, threshold)
        src.append(s)
        dst.append(d)
        sim.append(v)
        best_uid.append(uids[lo:hi])
        best.append(b)
    if src:
        _write(work_dir / "kept" / f"q={q:04d}.parquet", pl.DataFrame(
            {"src": np.concatenate(src), "dst": np.concatenate(dst), "sim": np.concatenate(sim)}))
        found = pl.DataFrame({"uid": np.concatenate(best_uid), "best": np.concatenate(best)})
        parts_of = routed.select("uid", "part").unique("uid")
        _write_best(work_dir, f"q={q:04d}", found.join(parts_of, on="uid", how="left"))
    return {"pairs": int(sum(len(s) for s in src)), "peak_rss": _peak_rss()}


# -- wave 4: survivors and the state ---------------------------------------------------------------------
def survivor_task(work: str, p: int, r: int, parts: int) -> dict:
    """One survivor per component whose label falls in partition p: verified first, then the
    shortest text, then the smallest key (the local fit's order)."""
    work_dir = Path(work)
    labels = _scan(work_dir / "labels" / f"r={r:04d}" / "*.parquet")
    members = (labels.filter(pl.col("label") % parts == p)
               .join(_scan(work_dir / "units" / "*.parquet"), left_on="node", right_on="uid").collect())
    if not members.height:
        return {"peak_rss": _peak_rss()}
    ranked = members.with_columns(pl.col("key").sort_by(["ok", "len", "key"], descending=[True, False, False])
                                  .first().over("label").alias("cluster_id"))
    for (kp,), group in ranked.select("key", "cluster_id", "part").partition_by("part", as_dict=True).items():
        _write(work_dir / "clustered" / f"p={kp:04d}" / f"l={p:04d}.parquet", group.drop("part"))
    return {"peak_rss": _peak_rss()}


def state_task(stage: Stage, work: str, p: int, exact: bool) -> dict:
    """Every row of key partition p with its unit's cluster id, nearest-neighbour similarity and
    survivor flag."""
    work_dir = Path(work)
    units = _scan(work_dir / "units" / f"p={p:04d}.parquet")
    if units is None:
        return {"peak_rss": _peak_rss()}
    per_unit = units.select("key", "uid")
    clustered = _scan(work_dir / "clustered" / f"p={p:04d}" / "*.parquet")
    if clustered is not None:
        per_unit = per_unit.join(clustered, on="key", how="left")
    else:
        per_unit = per_unit.with_columns(pl.lit(None, pl.Utf8).alias("cluster_id"))
    best = _scan(work_dir / "best" / f"p={p:04d}" / "*.parquet")
    if best is not None:
        # A unit searched in several clusters (nprobe > 1) keeps its best; the k-means path reports
        # "no other unit seen" as null, the exact path as -inf (as `similar_pairs` does).
        best = best.group_by("uid").agg(pl.col("best").max().cast(pl.Float64))
        if not exact:
            best = best.with_columns(pl.when(pl.col("best").is_finite()).then(pl.col("best")).alias("best"))
        per_unit = per_unit.join(best, on="uid", how="left")
    else:
        per_unit = per_unit.with_columns(pl.lit(None, pl.Float64).alias("best"))
    col = stage.col
    per_unit = per_unit.select(
        "key", pl.col("cluster_id").fill_null(pl.col("key")).alias(col("cluster_id")),
        pl.col("best").fill_nan(None).alias(col("nn_similarity")),
        (pl.col("key") == pl.col("cluster_id").fill_null(pl.col("key"))).alias(col("is_survivor")))
    owners = _scan(work_dir / "owners" / f"p={p:04d}" / "*.parquet")
    out = owners.join(per_unit, on="key", how="left").drop("key").collect()
    _write(work_dir / "state" / f"p={p:04d}.parquet", out)
    return {"peak_rss": _peak_rss()}


# -- the driver ----------------------------------------------------------------------------------------
def semantic_fit(
    stage: Stage,
    units: Sequence[WorkUnit],
    work_dir: Path,
    state_path: Path,
    *,
    task_map: TaskMap = serial_map,
    partitions: int | None = None,
    memory_limit: str = "1GB",
    keep_work: bool = False,
) -> dict[str, Any]:
    """Fit `SemanticDedupStage` as waves of tasks and write its state table to `state_path`.
    Returns the fit stats (the manifest summary's own fields are also set on the stage)."""
    cfg = stage.config
    run = FitWaves(stage, units, work_dir, task_map)
    work_dir, work, slices, columns, wave = run.work_dir, run.work, run.slices, run.columns, run.wave
    parts = partitions or max(4, math.ceil(run.rows / 1_000_000))
    stats = run.begin(parts)
    bases = [s[3] for s in slices]
    wave("keys", keys_task, [(stage, work, s, columns, parts) for s in slices])
    n = sum(o["units"] for o in wave("units", units_task, [(work, p, bases) for p in range(parts)]))
    stats["units"] = n
    linked = 0
    exact = n <= cfg.exact_max
    if n:
        wave("embed", embed_task, [(stage, work, s, columns) for s in slices])
    if n >= 2 and exact:
        linked = sum(o["pairs"] for o in wave("exact", exact_task,
                                               [(work, s[0], cfg.neighbours, cfg.threshold) for s in slices]))
    elif n >= 2:
        n_clusters = cfg.clusters or max(2, int(np.sqrt(n)))
        rate = _KMEANS_POINTS * n_clusters / n
        wave("sample", sample_task, [(work, s[0], rate) for s in slices])
        wave("kmeans", kmeans_task, [(work, n_clusters, 0)])
        wave("assign", assign_task, [(work, s[0], min(cfg.nprobe, n_clusters), parts) for s in slices])
        linked = sum(o["pairs"] for o in wave("search", cluster_search_task,
                                               [(work, q, cfg.neighbours, cfg.threshold) for q in range(parts)]))
        stats["clusters"] = n_clusters
    duplicates = 0
    if linked:
        r = connected_components(work_dir, parts, wave, memory_limit)
        stats["label_rounds"] = r
        wave("survivors", survivor_task, [(work, p, r, parts) for p in range(parts)])
        duplicates = pl.scan_parquet(sorted((work_dir / "labels" / f"r={r:04d}").glob("*.parquet"))).select(
            pl.len()).collect().item()
    wave("state", state_task, [(stage, work, p, exact) for p in range(parts)])
    _assemble_state(stage, work_dir, state_path, memory_limit)
    run.finish(keep_work)
    # What the manifest summary reports, as after a local fit.
    stage._fit_stats = {"units": n, "linked_pairs": int(linked), "units_in_duplicate_clusters": int(duplicates)}
    return stats
