"""Global steps at scale: MinHash clustering as partitioned Parquet and iterated joins on Ray.

`MinHashDedupStage.fit` (filters/minhash.py) holds every row's band keys and the candidate graph
in one process: right up to tens of millions of rows on one machine. On a cluster the same fit
runs as waves of Ray tasks over files in a shared work folder (`<step>/_fit/`), each task holding
one slice or one hash partition, never the corpus:

1. **signatures** (one task per input unit): shingles, MinHash signatures and LSH band keys of the
   unit's rows, written as `bands/p=K/` files hash-partitioned on (band, key), plus the rows'
   survivor metadata (`meta/`).
2. **buckets** (one task per partition): sort the partition's (band, key, row) and link each row
   to the next `window` rows of its bucket, exactly as `candidate_edges`; edges are written twice,
   sorted by source and by destination, so later tasks read only the row groups they need.
3. **jaccard** (one task per unit, then one per partition): a unit task de-duplicates the edges
   whose source it owns, re-shingles only its endpoint rows, and ships each edge with its source
   set to the partition of its destination; a partition task joins destination sets and keeps
   edges at or above the threshold (the exact Jaccard of `edge_jaccard`).
4. **components** (per partition, iterated): min-label propagation over the kept edges with
   pointer jumping (label := label of label), each round a DuckDB join per node partition under a
   memory limit; rounds grow with log(diameter), not with the chain length.
5. **survivors** (per label partition) and the **state** (per unit, then one streamed DuckDB
   pass): the survivor policy of `survivors`, the same state columns as the local fit.

Every task writes its files atomically under deterministic names, so a retried task (killed
worker) overwrites its own output and a wave can be re-run; the result equals the local fit row
for row (tests/test_ray_global.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io import atomic_path, remove_tree, write_table
from curate.stage import Stage, WorkUnit

_SUB_BATCH = 4096
_PART_MULT = np.uint64(0x9E3779B97F4A7C15)
TaskMap = Callable[[Callable, Sequence[tuple]], list[Any]]


# -- task maps: where the waves run ---------------------------------------------------------------
def serial_map(fn: Callable, args: Sequence[tuple]) -> list[Any]:
    """Run a wave in this process (tests, one machine)."""
    return [fn(*a) for a in args]


def ray_map(num_cpus: float = 1.0, max_retries: int = 3, memory: int | None = None) -> TaskMap:
    """Run a wave as Ray tasks; a task lost with its worker is retried (its output is idempotent)."""

    def run(fn: Callable, args: Sequence[tuple]) -> list[Any]:
        import ray

        from curate.executors import _THREAD_ENV

        threads = str(max(1, int(num_cpus)))
        opts: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": max_retries,
                                "runtime_env": {"env_vars": dict.fromkeys(_THREAD_ENV, threads)}}
        if memory:
            opts["memory"] = memory
        remote = ray.remote(fn).options(**opts)
        return ray.get([remote.remote(*a) for a in args])

    return run


# -- small helpers --------------------------------------------------------------------------------
def _write(path: Path, frame: pl.DataFrame) -> None:
    write_table(path, frame.to_arrow())


def _scan(pattern: Path) -> pl.LazyFrame | None:
    files = sorted(pattern.parent.glob(pattern.name)) if pattern.parent.exists() else []
    return pl.scan_parquet(files) if files else None


def _duck(memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'; SET threads=1; SET preserve_insertion_order=false")
    return con


def _copy(con: duckdb.DuckDBPyConnection, sql: str, target: Path) -> None:
    """Write a DuckDB query to Parquet atomically (temp file, rename)."""
    with atomic_path(target) as tmp:
        con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")


def _files(folder: Path) -> str:
    """DuckDB list literal of the Parquet files under `folder` (empty list when none)."""
    files = sorted(folder.rglob("*.parquet")) if folder.exists() else []
    return "[" + ", ".join(f"'{f}'" for f in files) + "]"


def _partition_of(band: np.ndarray, key: np.ndarray, parts: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        mixed = (key + band.astype(np.uint64) * _PART_MULT) * _PART_MULT
    return ((mixed >> np.uint64(33)) % np.uint64(parts)).astype(np.int64)


# -- the slices the fit reads ---------------------------------------------------------------------
def fit_slices(units: Sequence[WorkUnit]) -> list[tuple[int, str, tuple[int, ...], int, int]]:
    """(slice id, path, row groups, first global row, rows) in the order the local fit numbers rows:
    files sorted by name, row groups in file order."""
    order = sorted(units, key=lambda u: (u.path, u.first_row))
    out, base = [], 0
    for i, unit in enumerate(order):
        rows = unit.rows if unit.rows is not None else sum(
            pq.ParquetFile(unit.path).metadata.row_group(g).num_rows for g in unit.row_groups or ())
        out.append((i, unit.path, tuple(unit.row_groups or ()), base, rows))
        base += rows
    return out


# -- wave 1: signatures -----------------------------------------------------------------------------
def _signature_part(stage: Stage, row: int, part: pl.DataFrame) -> dict:
    """The local fit's own pass-1 step on one sub-batch (band keys, usable rows, survivor
    metadata, signatures), so both fits agree by construction."""
    fn = getattr(stage, "signature_part", None) or stage._signature_part
    return fn((row, part))


def _shingles(stage: Stage, texts: pl.Series):
    from curate.filters.minhash import shingle_hashes

    cfg = stage.config
    if hasattr(cfg, "nfkc"):
        return shingle_hashes(texts, cfg.ngram, nfkc=cfg.nfkc)
    return shingle_hashes(texts, cfg.ngram)


def signature_task(stage: Stage, work: str, slice_: tuple, columns: list[str], parts: int) -> dict:
    sid, path, groups, base, _rows = slice_
    bands, _r = stage.lsh()
    work_dir = Path(work)
    keys, key_rows, meta, sigs_out = [], [], [], []
    row = base
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_SUB_BATCH, row_groups=list(groups), columns=columns):
        part = pl.from_arrow(pa.Table.from_batches([batch]))
        done = _signature_part(stage, row, part)
        keys.append(done["keys"])
        key_rows.append(np.asarray(done["rows"], np.int64))
        meta.append(done["meta"].with_columns(pl.int_range(row, row + part.height, dtype=pl.Int64).alias("row")))
        if done.get("sigs") is not None:
            sigs_out.append(done["sigs"])
        row += part.height
    key_matrix = np.concatenate(keys) if keys else np.zeros((0, bands), np.uint64)
    ids = np.concatenate(key_rows) if key_rows else np.zeros(0, np.int64)
    n = len(ids)
    band = np.tile(np.arange(bands, dtype=np.int32), n)
    flat_keys = key_matrix.reshape(-1)
    long = pl.DataFrame({"band": band, "key": flat_keys, "row": np.repeat(ids, bands),
                         "_p": _partition_of(band, flat_keys, parts)})
    for (p,), group in long.partition_by("_p", as_dict=True).items():
        _write(work_dir / "bands" / f"p={p:04d}" / f"s={sid:05d}.parquet", group.drop("_p"))
    _write(work_dir / "meta" / f"s={sid:05d}.parquet",
           pl.concat(meta) if meta else pl.DataFrame(schema={"row": pl.Int64, "trace_id": pl.Utf8}))
    if sigs_out:
        _write(work_dir / "signatures" / f"s={sid:05d}.parquet", pl.concat(sigs_out))
    return {"rows": row - base, "peak_rss": _peak_rss()}


# -- wave 2: buckets -> candidate edges --------------------------------------------------------------
def bucket_task(work: str, p: int, window: int) -> dict:
    work_dir = Path(work)
    scan = _scan(work_dir / "bands" / f"p={p:04d}" / "*.parquet")
    frame = scan.sort("band", "key", "row").collect() if scan is not None else None
    pairs = []
    if frame is not None and frame.height:
        band, key, row = (frame[c].to_numpy() for c in ("band", "key", "row"))
        del frame
        for d in range(1, window + 1):
            same = (band[d:] == band[:-d]) & (key[d:] == key[:-d])
            pairs.append((row[:-d][same] << np.int64(32)) | row[d:][same])
    packed = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, np.int64)
    edges = pl.DataFrame({"src": packed >> np.int64(32), "dst": packed & np.int64(0xFFFFFFFF)})
    # Row groups of 64k: a unit task's range filter reads only the groups it overlaps.
    for name, order in (("by_src", "src"), ("by_dst", "dst")):
        target = work_dir / "edges" / name / f"p={p:04d}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(edges.sort(order).to_arrow(), tmp, row_group_size=65536, compression="zstd")
    return {"edges": edges.height, "peak_rss": _peak_rss()}


# -- wave 3: exact Jaccard of candidate edges ---------------------------------------------------------
def _sets(stage: Stage, texts: pl.Series, rows: np.ndarray) -> pl.DataFrame:
    """Distinct shingle hashes per row (the sets `edge_jaccard` compares)."""
    hashes, offsets, _ = _shingles(stage, texts)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(hashes, pa.uint64()))
    return pl.DataFrame({"row": rows.astype(np.int64), "s": pl.Series(lists).list.unique()})


def endpoint_task(stage: Stage, work: str, slice_: tuple, columns: list[str], parts: int) -> dict:
    """Edges whose source lies in this slice, de-duplicated (copies from several bands share the
    source); with verification, the slice's endpoint shingle sets go to their edges' partitions."""
    from curate.filters.minhash import text_expr

    sid, path, groups, base, rows = slice_
    cfg = stage.config
    work_dir = Path(work)
    lo, hi = base, base + rows
    by_src = _scan(work_dir / "edges" / "by_src" / "*.parquet")
    mine = (by_src.filter(pl.col("src").is_between(lo, hi, closed="left")).unique().collect()
            if by_src is not None else pl.DataFrame(schema={"src": pl.Int64, "dst": pl.Int64}))
    if not cfg.verify_jaccard:
        for q, group in _by_partition(mine, "dst", parts):
            _write(work_dir / "kept" / f"q={q:04d}" / f"s={sid:05d}.parquet",
                   group.with_columns(pl.lit(None, pl.Float64).alias("sim")))
        return {"candidates": mine.height, "peak_rss": _peak_rss()}
    by_dst = _scan(work_dir / "edges" / "by_dst" / "*.parquet")
    dst_rows = (by_dst.filter(pl.col("dst").is_between(lo, hi, closed="left")).select("dst").unique().collect()
                ["dst"].to_numpy() if by_dst is not None else np.zeros(0, np.int64))
    wanted = np.union1d(mine["src"].to_numpy(), dst_rows).astype(np.int64)
    sets = pl.DataFrame(schema={"row": pl.Int64, "s": pl.List(pl.UInt64)})
    if len(wanted):
        text = text_expr(cfg.field)
        parts_, row = [], base
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_SUB_BATCH, row_groups=list(groups),
                                                       columns=columns):
            a, b = np.searchsorted(wanted, [row, row + batch.num_rows])
            if b > a:
                texts = pl.from_arrow(pa.Table.from_batches([batch])).select(text).to_series()
                parts_.append(_sets(stage, texts.gather(wanted[a:b] - row), wanted[a:b]))
            row += batch.num_rows
        sets = pl.concat(parts_)
    half = mine.join(sets.rename({"row": "src", "s": "a"}), on="src", how="left")
    for q, group in _by_partition(half, "dst", parts):
        _write(work_dir / "half" / f"q={q:04d}" / f"s={sid:05d}.parquet", group)
    dsets = sets.filter(pl.col("row").is_in(dst_rows))
    for q, group in _by_partition(dsets, "row", parts):
        _write(work_dir / "dsets" / f"q={q:04d}" / f"s={sid:05d}.parquet", group)
    return {"candidates": mine.height, "peak_rss": _peak_rss()}


def _by_partition(frame: pl.DataFrame, column: str, parts: int):
    if not frame.height:
        return []
    keyed = frame.with_columns((pl.col(column) % parts).alias("_q"))
    return [(q, g.drop("_q")) for (q,), g in keyed.partition_by("_q", as_dict=True).items()]


def jaccard_task(work: str, q: int, threshold: float) -> dict:
    work_dir = Path(work)
    half = _scan(work_dir / "half" / f"q={q:04d}" / "*.parquet")
    if half is None:
        return {"kept": 0, "peak_rss": _peak_rss()}
    dsets = _scan(work_dir / "dsets" / f"q={q:04d}" / "*.parquet")
    joined = half.join(dsets.rename({"row": "dst", "s": "b"}), on="dst", how="left").collect()
    inter = joined["a"].list.set_intersection(joined["b"]).list.len()
    union = joined["a"].list.len() + joined["b"].list.len() - inter
    sim = (inter / union).fill_nan(0.0).fill_null(0.0)
    kept = joined.select("src", "dst").with_columns(sim.alias("sim")).filter(pl.col("sim") >= threshold)
    _write(work_dir / "kept" / f"q={q:04d}" / "all.parquet", kept)
    return {"kept": kept.height, "peak_rss": _peak_rss()}


# -- wave 4: connected components by iterated joins ----------------------------------------------------
def adjacency_task(work: str, p: int, parts: int, memory_limit: str) -> dict:
    """Both directions of the kept edges whose node falls in partition p; labels start as the node."""
    work_dir = Path(work)
    con = _duck(memory_limit)
    kept = _files(work_dir / "kept")
    edges = (f"SELECT src AS node, dst AS nbr FROM read_parquet({kept}) UNION ALL "
             f"SELECT dst AS node, src AS nbr FROM read_parquet({kept})")
    _copy(con, f"SELECT * FROM ({edges}) WHERE node % {parts} = {p}", work_dir / "adj" / f"p={p:04d}.parquet")
    _copy(con, f"SELECT DISTINCT node, node AS label FROM ({edges}) WHERE node % {parts} = {p}",
          work_dir / "labels" / "r=0000" / f"p={p:04d}.parquet")
    return {"peak_rss": _peak_rss()}


def propagate_task(work: str, p: int, r: int, memory_limit: str) -> dict:
    """label'(v) = min(label(v), min label(u) over neighbours u): one join of the partition's
    adjacency against all labels (DuckDB spills past `memory_limit`)."""
    work_dir = Path(work)
    con = _duck(memory_limit)
    labels = _files(work_dir / "labels" / f"r={r:04d}")
    own = work_dir / "labels" / f"r={r:04d}" / f"p={p:04d}.parquet"
    adj = work_dir / "adj" / f"p={p:04d}.parquet"
    sql = (f"SELECT node, min(label) AS label FROM ("
           f" SELECT node, label FROM read_parquet('{own}')"
           f" UNION ALL SELECT a.node, l.label FROM read_parquet('{adj}') a"
           f"  JOIN read_parquet({labels}) l ON a.nbr = l.node) GROUP BY node")
    _copy(con, sql, work_dir / "prop" / f"r={r:04d}" / f"p={p:04d}.parquet")
    return {"peak_rss": _peak_rss()}


def jump_task(work: str, p: int, r: int, memory_limit: str) -> dict:
    """Pointer jumping: label''(v) = label'(label'(v)); returns how many labels changed."""
    work_dir = Path(work)
    con = _duck(memory_limit)
    prop = _files(work_dir / "prop" / f"r={r:04d}")
    own = work_dir / "prop" / f"r={r:04d}" / f"p={p:04d}.parquet"
    old = work_dir / "labels" / f"r={r:04d}" / f"p={p:04d}.parquet"
    target = work_dir / "labels" / f"r={r + 1:04d}" / f"p={p:04d}.parquet"
    _copy(con, f"SELECT o.node, least(o.label, coalesce(j.label, o.label)) AS label FROM read_parquet('{own}') o "
               f"LEFT JOIN read_parquet({prop}) j ON o.label = j.node", target)
    changed = con.execute(f"SELECT count(*) FROM read_parquet('{target}') n JOIN read_parquet('{old}') o "
                          f"USING (node) WHERE n.label <> o.label").fetchone()[0]
    return {"changed": int(changed), "peak_rss": _peak_rss()}


def connected_components(work_dir: Path, parts: int, wave: Callable, memory_limit: str = "1GB") -> int:
    """Label every node of the edges under `<work_dir>/kept/` with the smallest node of its
    component (`labels/r=R/`); returns R, the rounds taken. `wave(name, fn, args)` runs a wave."""
    work = str(work_dir)
    wave("adjacency", adjacency_task, [(work, p, parts, memory_limit) for p in range(parts)])
    r = 0
    while True:  # labels only decrease and stay inside their component: this terminates
        wave(f"propagate-{r}", propagate_task, [(work, p, r, memory_limit) for p in range(parts)])
        changed = sum(o["changed"] for o in wave(f"jump-{r}", jump_task,
                                                  [(work, p, r, memory_limit) for p in range(parts)]))
        r += 1
        if changed == 0:
            return r


# -- wave 5: survivors and the state table ----------------------------------------------------------------
def survivor_task(stage: Stage, work: str, p: int, r: int, parts: int, memory_limit: str) -> dict:
    """One survivor per cluster whose label falls in partition p (the policy of `survivors`)."""
    from curate.duck import fetch_arrow
    from curate.filters.minhash import survivors

    work_dir = Path(work)
    con = _duck(memory_limit)
    labels, meta = _files(work_dir / "labels" / f"r={r:04d}"), _files(work_dir / "meta")
    members = pl.from_arrow(fetch_arrow(con.sql(
        f"SELECT m.*, l.label FROM read_parquet({labels}) l JOIN read_parquet({meta}) m ON m.row = l.node "
        f"WHERE l.label % {parts} = {p} ORDER BY m.row")))
    if not members.height:
        return {"clusters": 0, "peak_rss": _peak_rss()}
    ranked = survivors(members.drop("label"), members["label"].to_numpy(), "trace_id",
                       stage.config.prefer_teachers)
    _write(work_dir / "clustered" / f"p={p:04d}.parquet",
           ranked.select("row", pl.col("_survivor").alias("cluster_id"), pl.col("_size").alias("size")))
    return {"clusters": int(members["label"].n_unique()), "peak_rss": _peak_rss()}


def best_task(work: str, p: int, parts: int, memory_limit: str) -> dict:
    """Highest kept similarity per node of partition p (max_jaccard)."""
    work_dir = Path(work)
    con = _duck(memory_limit)
    kept = _files(work_dir / "kept")
    _copy(con, f"SELECT node, max(sim) AS best FROM (SELECT src AS node, sim FROM read_parquet({kept}) UNION ALL "
               f"SELECT dst AS node, sim FROM read_parquet({kept})) WHERE node % {parts} = {p} GROUP BY node",
          work_dir / "best" / f"p={p:04d}.parquet")
    return {"peak_rss": _peak_rss()}


def state_task(stage: Stage, work: str, slice_: tuple) -> dict:
    """The state rows of one slice, in row order (the local fit's columns and values)."""
    sid, _path, _groups, base, rows = slice_
    work_dir = Path(work)
    meta = pl.read_parquet(work_dir / "meta" / f"s={sid:05d}.parquet")
    in_range = pl.col("row").is_between(base, base + rows, closed="left")
    clustered = _scan(work_dir / "clustered" / "*.parquet")
    best = _scan(work_dir / "best" / "*.parquet")
    frame = meta.select("row", "trace_id")
    frame = frame.join(clustered.filter(in_range).collect() if clustered is not None else
                       pl.DataFrame(schema={"row": pl.Int64, "cluster_id": pl.Utf8, "size": pl.Int64}),
                       on="row", how="left", maintain_order="left")
    frame = frame.join(best.rename({"node": "row"}).filter(in_range).collect() if best is not None else
                       pl.DataFrame(schema={"row": pl.Int64, "best": pl.Float64}),
                       on="row", how="left", maintain_order="left")
    col = stage.col
    out = frame.select(
        "row", "trace_id",
        pl.col("cluster_id").fill_null(pl.col("trace_id")).alias(col("cluster_id")),
        pl.col("size").fill_null(1).cast(pl.Int64).alias(col("cluster_size")),
        (pl.col("trace_id") == pl.col("cluster_id").fill_null(pl.col("trace_id"))).alias(col("is_survivor")),
        pl.col("best").cast(pl.Float64).alias(col("max_jaccard")),
    )
    _write(work_dir / "state" / f"s={sid:05d}.parquet", out)
    return {"peak_rss": _peak_rss()}


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FitWaves:
    """What every distributed fit starts from and runs with: a clean work folder (partial waves of
    a dead run are not trusted), the input slices, the columns to read, and `wave`, which runs
    one wave of tasks and records its task count, seconds and the tasks' peak memory."""

    def __init__(self, stage: Stage, units: Sequence[WorkUnit], work_dir: Path, task_map: TaskMap):
        self.work_dir = Path(work_dir)
        remove_tree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        self.work = str(self.work_dir)
        self.slices = fit_slices(units)
        present = set(pq.read_schema(self.slices[0][1]).names) if self.slices else set()
        self.columns = list(stage.fit_columns) + [c for c in stage.fit_optional_columns if c in present]
        self.rows = sum(s[4] for s in self.slices)
        self.task_map = task_map
        self.stats: dict[str, Any] = {}
        self.peaks: list[int] = []

    def begin(self, partitions: int) -> dict[str, Any]:
        self.stats = {"rows": self.rows, "partitions": partitions, "waves": {}}
        return self.stats

    def wave(self, name: str, fn: Callable, args: list[tuple]) -> list[dict]:
        t = time.perf_counter()
        out = self.task_map(fn, args) if args else []
        self.stats["waves"][name] = {"tasks": len(args), "seconds": round(time.perf_counter() - t, 2)}
        self.peaks.extend(o.get("peak_rss", 0) for o in out)
        return out

    def finish(self, keep_work: bool) -> None:
        self.stats["peak_rss_per_task"] = max(self.peaks, default=0)
        if not keep_work:
            remove_tree(self.work_dir)


# -- the driver ---------------------------------------------------------------------------------------
def minhash_fit(
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
    """Fit `MinHashDedupStage` as waves of tasks and write its state table to `state_path`
    (streamed; the driver never holds it). Returns the fit stats (also set on the stage)."""
    cfg = stage.config
    run = FitWaves(stage, units, work_dir, task_map)
    work_dir, work, slices, columns, n, wave = run.work_dir, run.work, run.slices, run.columns, run.rows, run.wave
    bands, _rows = stage.lsh()
    parts = partitions or max(4, math.ceil(n * bands * 20 / (128 * 2**20)))  # ~128 MiB of band rows each
    stats = run.begin(parts)
    wave("signatures", signature_task, [(stage, work, s, columns, parts) for s in slices])
    stats["candidate_pairs"] = 0
    wave("buckets", bucket_task, [(work, p, cfg.window) for p in range(parts)])
    found = wave("endpoints", endpoint_task, [(stage, work, s, columns, parts) for s in slices])
    stats["candidate_pairs"] = sum(o["candidates"] for o in found)
    if cfg.verify_jaccard:
        kept = wave("jaccard", jaccard_task, [(work, q, cfg.threshold) for q in range(parts)])
        stats["linked_pairs"] = sum(o["kept"] for o in kept)
    else:
        stats["linked_pairs"] = stats["candidate_pairs"]
    stats["clusters_with_duplicates"] = 0
    if stats["linked_pairs"]:
        r = connected_components(work_dir, parts, wave, memory_limit)
        stats["label_rounds"] = r
        found = wave("survivors", survivor_task, [(stage, work, p, r, parts, memory_limit) for p in range(parts)])
        stats["clusters_with_duplicates"] = sum(o["clusters"] for o in found)
        wave("best", best_task, [(work, p, parts, memory_limit) for p in range(parts)])
    wave("state", state_task, [(stage, work, s) for s in slices])
    _assemble_state(stage, work_dir, state_path, memory_limit)
    if cfg.signatures_out:
        _assemble_signatures(stage, work_dir)
    run.finish(keep_work)
    public = {"rows_fit": n, **{k: stats[k] for k in ("candidate_pairs", "linked_pairs",
                                                      "clusters_with_duplicates")}}
    # The local fit's phases, from the waves that do their work (wall seconds of the whole wave).
    seconds = {k: v["seconds"] for k, v in stats["waves"].items()}
    reread = sum(seconds.get(k, 0) for k in ("endpoints", "jaccard"))
    public["fit_seconds"] = {"signatures": round(seconds.get("signatures", 0) + seconds.get("buckets", 0), 2),
                             "candidate_reread": round(reread, 2),
                             "graph_and_survivors": round(sum(seconds.values()) - reread - seconds.get(
                                 "signatures", 0) - seconds.get("buckets", 0), 2)}
    stage._fit_stats = public  # what the manifest summary reports, as after a local fit
    return stats


def _assemble_state(stage: Stage, work_dir: Path, state_path: Path, memory_limit: str) -> None:
    """One pass: first row per trace_id (as the local fit's unique(keep=first)), sorted by trace_id
    as the local fits write it (workers then skip the sort in `sorted_state`)."""
    files = _files(work_dir / "state")
    if files == "[]":
        write_table(state_path, stage._empty_state())
        return
    con = _duck(memory_limit)
    names = ", ".join(f'"{f.name}"' for f in stage.output_fields())
    _copy(con, f"SELECT trace_id, {names} FROM read_parquet({files}) "
               f"QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY row) = 1 ORDER BY trace_id", state_path)


def _assemble_signatures(stage: Stage, work_dir: Path) -> None:
    import json

    from curate.filters.minhash import algorithm_id

    cfg = stage.config
    files = sorted((work_dir / "signatures").glob("*.parquet"))
    meta = {"algorithm": algorithm_id(cfg.num_perm, cfg.seed, cfg.ngram),
            "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)}
    target = Path(cfg.signatures_out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        writer = None
        for f in files:
            table = pq.read_table(f)
            if writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}),
                                                     **{k: v.encode() for k, v in meta.items()}})
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
        if writer is not None:
            writer.close()


# Stages whose fit has a distributed form, by stage name; `RayExecutor.fit_state` looks here.
def _semantic_fit(*args, **kwargs) -> dict[str, Any]:
    from curate.ray_semantic import semantic_fit  # imports this module: resolved at call time

    return semantic_fit(*args, **kwargs)


DISTRIBUTED_FITS: dict[str, Callable[..., dict[str, Any]]] = {"dedup_minhash": minhash_fit,
                                                               "dedup_semantic": _semantic_fit}
