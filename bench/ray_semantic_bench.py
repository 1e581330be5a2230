"""Semantic dedup, local vs Ray: the same `dedup_semantic` step (fit and join) on both engines.

The k-means path (SemDeDup layout) on synthetic traces with near-duplicates, with `clusters` set so
that faiss trains on every vector in both engines (64 points per centroid): then both fits must
give the same clusters, which the bench checks. Locally the fit holds every vector and the
whole search in the driver; on Ray each task holds a slice or one cluster partition. Prints a table
and writes the `ray_semantic` section of docs/benchmarks.md.

    python bench/ray_semantic_bench.py --rows 100000 --cpus 2
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

import curate.runner as runner  # noqa: E402
from curate.executors import LocalExecutor  # noqa: E402
from curate.filters.semantic import SemanticConfig, SemanticDedupStage  # noqa: E402
from curate.ray_executor import RayExecutor  # noqa: E402


def make_traces(folder: Path, rows: int, words: int, *, dup_share: float = 0.2, seed: int = 0) -> None:
    """`rows` traces of `words` words drawn from the static model's own ASCII word pieces (texts
    of made-up tokens all embed alike); `dup_share` copy an earlier trace with two words changed.
    Measured: such near-copies have cosine >= 0.997, distinct traces <= 0.988 (threshold 0.995)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.filters.embeddings import load_model

    vocab = np.array(sorted(w for w in load_model("static").model.tokenizer.get_vocab()
                            if w.isascii() and w.isalpha() and len(w) >= 4), dtype=object)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1000, -(-rows // 8))  # 8 files: 8 units, so both engines can spread the work
    for f, lo in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - lo)
        ids = rng.integers(0, len(vocab), size=(n, words))
        dup = np.flatnonzero(rng.random(n) < dup_share)
        dup = dup[dup > 0]
        ids[dup] = ids[rng.integers(0, dup)]
        for _ in range(2):
            ids[dup, rng.integers(0, words, len(dup))] = rng.integers(0, len(vocab), len(dup))
        table = pa.table({
            "trace_id": [f"t{lo + i:08d}" for i in range(n)],
            "problem_id": [f"p{(lo + i) // 4:07d}" for i in range(n)],
            "prompt": ["Compute the answer."] * n,
            "reasoning": [" ".join(row) for row in vocab[ids]],
            "answer": [str(i % 97) for i in range(n)],
        })
        pq.write_table(table, folder / f"part-{f:05d}.parquet", row_group_size=10_000, compression="zstd")


def run_phase(engine_name: str, work: Path, cpus: int, rows: int) -> None:
    """One engine's run in this (fresh) process, so each driver's peak is its own."""
    import json

    cfg = config(rows)
    if engine_name == "local":
        engine = LocalExecutor(cpus)
    else:
        engine = RayExecutor(workers=cpus)
        engine.ensure_ray()
    t = time.perf_counter()
    manifest = runner.run_stage(SemanticDedupStage(cfg), input_dir=work / "in", out_dir=work / engine_name,
                                executor=engine, progress=False)
    wall = time.perf_counter() - t
    fit = getattr(engine, "last_fit_stats", None) or {}
    if engine_name == "ray":  # workers report their own peaks
        worker_peak = max([fit.get("peak_rss_per_task", 0), *engine.worker_peak_rss.values()])
    else:  # the pool's workers have been joined: the largest of their peaks
        worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (work / f"{engine_name}.json").write_text(json.dumps({
        "wall": wall, "rows": manifest.rows_out, "not_survivor": manifest.counts.get("not_survivor", 0),
        "worker_peak": worker_peak, "driver_peak": driver_peak, "fit": fit, "load": os.getloadavg()[1]}))
    if engine_name == "ray":
        engine.shutdown()


def config(rows: int) -> SemanticConfig:
    return SemanticConfig(field="response", model="static", threshold=0.995, exact_max=min(10_000, rows // 4),
                          clusters=math.ceil(rows / 64))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--phase", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.phase:
        run_phase(args.phase, Path(args.work), args.cpus, args.rows)
        return
    import json
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="ray-semantic-bench-"))
    try:
        make_traces(work / "in", args.rows, args.words)
        cfg = config(args.rows)
        results = {}
        for name in ("local", "ray"):  # each engine in a fresh process: its driver's peak is its own
            subprocess.run([sys.executable, __file__, "--phase", name, "--work", str(work), "--rows",
                            str(args.rows), "--cpus", str(args.cpus)], check=True)
            results[name] = json.loads((work / f"{name}.json").read_text())
            print(f"{name}: {results[name]['wall']:.1f}s", flush=True)
        a = pl.read_parquet(work / "local" / "_state.parquet").sort("trace_id")
        b = pl.read_parquet(work / "ray" / "_state.parquet").sort("trace_id")
        same_clusters = a.drop("semantic__nn_similarity").equals(b.drop("semantic__nn_similarity"))
        nn_diff = (a["semantic__nn_similarity"] - b["semantic__nn_similarity"]).abs().max()
        fit = results["ray"]["fit"]
        mib = 2**20
        lt, rt = results["local"]["wall"], results["ray"]["wall"]
        table = [
            "| engine | rows | wall s | rows/s | not survivors | peak RSS driver | peak RSS per worker | load (5 min) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, label in (("local", f"local (fit in driver; {args.cpus}-process pool for the join)"),
                            ("ray", f"ray ({args.cpus} CPUs; partitioned fit, {fit.get('partitions')} partitions)")):
            r = results[name]
            driver, worker = r["driver_peak"], r["worker_peak"]
            table.append(f"| {label} | {r['rows']:,} | {r['wall']:.1f} | {r['rows'] / r['wall']:,.0f} | "
                         f"{r['not_survivor']:,} | {driver / mib:,.0f} MiB | "
                         f"{(f'{worker / mib:,.0f} MiB') if worker else '-'} | {r['load']:.1f} |")
        waves = ", ".join(f"{k} {v['seconds']}s" for k, v in fit.get("waves", {}).items())
        text = "\n".join([
            "## Ray engine: semantic dedup, local vs Ray (`bench/ray_semantic_bench.py`)\n",
            f"Machine: {machine()}; Ray local cluster with {args.cpus} CPUs (start-up not counted). {args.rows:,} synthetic traces of {args.words} words, 20% near-duplicates (two words "
            f"changed); `dedup_semantic` on the response, static model, threshold {cfg.threshold}, k-means path "
            f"with {cfg.clusters:,} clusters (64 vectors per centroid: faiss trains on every vector, so both "
            "engines must agree).\n",
            *table,
            "",
            f"Ray / local wall time: **{rt / lt:.2f}x**. Same clusters and survivors: {same_clusters}; largest "
            f"nn_similarity difference: {nn_diff:.1e}. Ray waves: {waves}.",
            "Locally the driver holds every vector, the k-means training set and the search; on Ray the driver "
            "holds none of them and a worker holds one slice, the training sample (the k-means task) or one "
            "cluster partition. The training sample is the one piece that does not shrink with more "
            "partitions: 64 vectors per centroid, about 200k x 384 floats (300 MB) at 10M units. Embedding "
            "dominates both runs: the local fit encodes in the driver, one process, while the Ray embed wave "
            "runs a task per slice on every CPU. At this size (64-dim static vectors) both drivers' peaks are "
            "mostly imported libraries; the local driver's grows with the corpus (vectors, search), the Ray "
            "driver's does not. Wall times come from a 2-core machine shared with other jobs (the load column).",
        ])
        print(text)
        if not args.no_write:
            write_section("ray_semantic", text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
