"""MinHash near-dup dedup of synthetic traces: `curate dedup minhash` vs a datasketch script.

Workload: N synthetic traces (words drawn with a Zipf law from the vocabulary of real traces in
/work/shared/data, or a built-in word list), 40..400 words each; 8% are lightly edited copies
(1-3% of words substituted) and 2% verbatim copies of earlier traces.

* ours: the real runner (`run_stage`, local process pool of 2) over Parquet shards: fit
  (signatures, LSH, exact-Jaccard check, components, survivors) and process (join, shard writes).
* baseline: the usual datasketch script on the same Parquet: per trace, word 5-gram shingles,
  `MinHash.update_batch`, `MinHashLSH.query` then `insert`, union-find over hits, cluster ids
  written to Parquet. `--baseline-rows M` runs it on the first M rows only and scales its time
  linearly (its per-row cost is flat: one dict lookup per band); the table says so.

Each side runs in its own subprocess; peak RSS is sampled over its whole process tree.

    python bench/minhash_bench.py [--rows 1000000] [--baseline-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import PeakRSS, machine, write_section  # noqa: E402

SHARD_ROWS = 100_000
REAL_TRACES = Path("/work/shared/data/traces/skythought_aime24_multimodel_outputs.jsonl.gz")


def vocabulary() -> list[str]:
    if REAL_TRACES.exists():
        text = pl.read_ndjson(REAL_TRACES)["response"].str.join(" ").item()
        words = pl.Series(re.findall(r"\S+", text[:3_000_000])).value_counts(sort=True)
        return words.filter(pl.col("count") >= 2)[:20000, 0].to_list()
    return [f"w{i}" for i in range(20000)]


def _join(ids: np.ndarray, offsets: np.ndarray, vocab: pa.Array) -> pl.Series:
    words = pa.DictionaryArray.from_arrays(pa.array(ids, pa.int32()), vocab).cast(pa.string())
    return pl.Series(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), words)).list.join(" ")


def make_traces(out: Path, rows: int, seed: int = 0) -> None:
    """Parquet shards of synthetic traces with planted near-duplicates."""
    rng = np.random.default_rng(seed)
    vocab = pa.array(vocabulary())
    zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9
    zipf /= zipf.sum()
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(0, rows, SHARD_ROWS):
        n = min(SHARD_ROWS, rows - shard)
        lengths = rng.integers(40, 400, n)
        ids = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        kind = rng.random(n)
        kind[0] = 1.0
        copy_rows = np.flatnonzero(kind < 0.10)
        sources = (rng.random(len(copy_rows)) * copy_rows).astype(np.int64)  # an earlier row
        pieces, piece_off = [], [0]
        for i, src in zip(copy_rows, sources, strict=True):  # ~10% of rows; bench data only
            base = ids[offsets[src]: offsets[src + 1]]
            if kind[i] < 0.08:
                edit = rng.random(len(base)) < rng.uniform(0.01, 0.03)
                base = np.where(edit, rng.integers(0, len(vocab), len(base)), base)
            pieces.append(base)
            piece_off.append(piece_off[-1] + len(base))
        texts = _join(ids, offsets, vocab)
        if len(copy_rows):
            texts = texts.scatter(copy_rows, _join(np.concatenate(pieces), np.array(piece_off), vocab))
        index = np.arange(shard, shard + n)
        frame = pl.DataFrame({
            "trace_id": "t" + pl.Series(index).cast(pl.Utf8).str.zfill(8),
            "problem_id": "p" + pl.Series(index // 4).cast(pl.Utf8).str.zfill(7),
            "teacher": np.array(["deepseek-r1", "qwq-32b", "qwen3-235b", "sky-t1"])[rng.integers(0, 4, n)],
            "prompt": "Problem " + pl.Series(index // 4).cast(pl.Utf8),
            "reasoning": texts,
            "answer": pl.Series(rng.integers(0, 1000, n)).cast(pl.Utf8),
        })
        frame.write_parquet(out / f"part-{shard // SHARD_ROWS:05d}.parquet", row_group_size=8192)
    print(f"wrote {rows:,} synthetic traces to {out}", flush=True)


# -- the two sides (each runs in its own subprocess) --------------------------------------
def run_ours(data: Path, work: Path, threshold: float) -> dict:
    from curate.executors import LocalExecutor
    from curate.filters.minhash import MinHashConfig, MinHashDedupStage
    from curate.runner import run_stage

    stage = MinHashDedupStage(MinHashConfig(threshold=threshold, field="response"))
    t = time.perf_counter()
    manifest = run_stage(stage, input_dir=data, out_dir=work / "ours", executor=LocalExecutor(2),
                         progress=False, force=True)
    wall = time.perf_counter() - t
    out = pl.scan_parquet(str(work / "ours" / "part-*.parquet"))
    removed = out.select((~pl.col("minhash__is_survivor")).sum()).collect().item()
    return {"wall_s": wall, "rows": manifest.rows_in, "removed": int(removed), "summary": manifest.summary}


def run_baseline(data: Path, work: Path, threshold: float, rows: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    ids: list[str] = []
    for path in sorted(data.glob("part-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["trace_id", "reasoning", "answer"]):
            for tid, reasoning, answer in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                if len(ids) >= rows:
                    break
                words = re.findall(r"\w+", f"{reasoning}\n{answer}".lower())
                shingles = {" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))}
                m = MinHash(num_perm=128)
                m.update_batch(list(shingles))
                row = len(ids)
                for hit in lsh.query(m):
                    a, b = find(row), find(hit)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                lsh.insert(row, m)
                ids.append(tid)
    clusters = [find(i) for i in range(len(ids))]
    pl.DataFrame({"trace_id": ids, "cluster": clusters}).write_parquet(work / "baseline.parquet")
    wall = time.perf_counter() - t
    return {"wall_s": wall, "rows": len(ids), "removed": len(ids) - len(set(clusters))}


def accuracy(per_source: int) -> str:
    """Precision/recall at the default config on labelled pairs built from real text."""
    import pyarrow as pa_

    from curate.filters import dedup_eval
    from curate.filters.minhash import MinHashConfig, MinHashDedupStage
    from curate.testing import run_stage_in_memory

    originals = dedup_eval.real_traces(per_source, seed=0)
    rows, labels = dedup_eval.labelled_set(originals, seed=0)
    table = pa_.table({"trace_id": rows["id"].to_list(), "teacher": ["t"] * rows.height, "prompt": [""] * rows.height,
                       "reasoning": rows["text"].to_list(), "answer": [""] * rows.height})
    lines = ["| config | predicted pairs | precision | source duplicates | false pairs | recall (<=3% edits) | "
             "detected at 0 / 1 / 2 / 3 / 5 / 10 / 20% edits |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, cfg in [("default (threshold 0.7, 5-grams, b/r for fp weight 0.1)", MinHashConfig()),
                      ("threshold 0.8", MinHashConfig(threshold=0.8)),
                      ("threshold 0.7, datasketch b/r (fp weight 0.5)", MinHashConfig(lsh_fp_weight=0.5))]:
        out = run_stage_in_memory(MinHashDedupStage(cfg), table).table
        got = dedup_eval.precision_recall(rows, labels, pl.Series(out.column("minhash__cluster_id").to_pylist()),
                                          source_threshold=cfg.threshold)
        curve = " / ".join(f"{d:.2f}" for _, d, _ in got["per_rate"])
        lines.append(f"| {name} | {got['predicted_pairs']} | {got['precision']:.3f} | {got['source_duplicate_pairs']} "
                     f"| {got['false_pairs']} | {got['recall']:.3f} ({got['dup_pairs']} copies) | {curve} |")
        print(lines[-1], flush=True)
    sources = originals.group_by("source").len().sort("source").rows()
    return f"""## MinHash near-dup accuracy (`bench/minhash_bench.py --accuracy`)

Labelled set built from real text ({", ".join(f"{n} {s}" for s, n in sources)} originals from
/work/shared/data: SkyThought teacher traces of the same AIME/AMC problems by up to 16 models, GSM8K
worked solutions, AIME solutions). Each original gets one copy with a known share of words edited (deleted,
substituted by a corpus word, inserted, or swapped with its neighbour; rate drawn from 0-20%) plus
formatting noise (first-letter case, a doubled space, a LaTeX `\\,`). Copies edited at most 3% are the
duplicates (recall); precision counts every predicted pair, where a pair is right when both texts derive
from one original, or when the two originals are themselves near-copies in the source data (exact 5-gram
Jaccard at or above the threshold: "source duplicates", e.g. two Sky-T1 variants writing the same trace).
Other teachers' traces of the same problem are the hard negatives. (`filters/dedup_eval.py`)

{chr(10).join(lines)}
"""


def cpu_profile(work: Path, rows: int) -> str:
    """CPU seconds per million rows of each step of our fit and process pass, one thread, on the
    first `rows` rows: where the time goes, independent of how busy the machine is."""
    import itertools

    import rensa

    from curate.filters import minhash as mh
    from curate.filters.dedup_state import join_sorted, sorted_state
    from curate.filters.verdicts import verified_expr
    from curate.runner import _Rescan

    stage = mh.MinHashDedupStage(mh.MinHashConfig(threshold=0.8, threads=1))
    files = sorted(str(p) for p in (work / "data").glob("part-*.parquet"))
    need = -(-rows // SHARD_ROWS)
    files = files[:need]
    cost: dict[str, float] = {}

    def timed(name, fn, *a):
        t = time.process_time()
        out = fn(*a)
        cost[name] = cost.get(name, 0.0) + time.process_time() - t
        return out

    batches = timed("read the fit columns (pyarrow, 1 pass)", lambda: list(_Rescan(files, list(stage.fit_columns))))
    n = sum(b.num_rows for b in batches)
    bands, r = stage.lsh()
    mh.shingle_hashes(pl.Series(["warm up the compiled loops"]), 5)
    for _, part in stage._sub_batches(batches):
        texts = timed("text = reasoning + answer, survivor columns (polars)", lambda p=part: (
            p.select(mh.text_expr("response")).to_series(),
            p.select("trace_id", pl.col("teacher").cast(pl.Utf8), verified_expr(p.columns).alias("_v"))))[0]
        h, o, _ = timed("tokenise + word and 5-gram hashes (numba)", mh.shingle_hashes, texts, 5)
        m = timed("rensa digest_matrix_from_flat_token_hashes", rensa.RMinHash.digest_matrix_from_flat_token_hashes,
                  h, o.astype(np.uint64), 128, 42)
        rows_ = timed("rensa to_rows() (Python lists, holds the GIL)", m.to_rows)
        sig = timed("lists -> numpy", lambda x=rows_: np.fromiter(itertools.chain.from_iterable(x), np.uint32,
                                                                  len(x) * 128).reshape(len(x), 128))
        timed("band keys", mh.band_keys, sig, bands, r)
    state_path = work / "ours" / "_state.parquet"  # left by the last full run
    if state_path.exists():
        state = pq.read_table(state_path)
        srt = timed("process pass: load the sorted state", sorted_state, state)
        for f in files:
            t = timed("process pass: read all columns", pq.read_table, f)
            out = timed("process pass: join the state", lambda t=t: join_sorted(t, srt)[0])
            timed("process pass: write the shard (zstd)", lambda o=out: pq.write_table(o, "/dev/null", compression="zstd"))
    total = sum(cost.values())
    lines = ["| step | CPU s per 1M rows | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v * 1e6 / n:.1f} | {v / total:.0%} |" for k, v in cost.items()]
    lines.append(f"| total of these steps | {total * 1e6 / n:.1f} | |")
    return "\n".join(lines)


def measured(side: str, args, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--data", str(work / "data"), "--work", str(work),
           "--threshold", str(args.threshold), "--baseline-rows", str(args.baseline_rows)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with PeakRSS() as rss:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["peak_rss_mib"] = (rss.peak_total - rss.peak_parent) / 2**20
    result["peak_rss_largest_mib"] = rss.peak_child / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows the datasketch side runs on")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help="keep data here (reused when present)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--profile", type=int, metavar="ROWS", default=None,
                        help="only the one-thread CPU profile of our steps on this many rows (needs --work with data)")
    parser.add_argument("--accuracy", type=int, metavar="PER_SOURCE", default=None,
                        help="only the accuracy run, on this many originals per real source")
    args = parser.parse_args()
    if args.accuracy:
        md = accuracy(args.accuracy)
        print(md)
        if not args.no_write:
            write_section("minhash-accuracy", md)
        return
    if args.profile:
        print(cpu_profile(args.work, args.profile))
        return
    if args.side == "ours":
        print(json.dumps(run_ours(args.data, args.work, args.threshold)))
        return
    if args.side == "baseline":
        print(json.dumps(run_baseline(args.data, args.work, args.threshold, args.baseline_rows)))
        return
    args.baseline_rows = args.baseline_rows or args.rows
    work = args.work or Path(tempfile.mkdtemp(prefix="curate-minhash-bench-"))
    if not (work / "data").exists():
        make_traces(work / "data", args.rows)
    # baseline, ours, baseline: the two baseline halves bracket ours, so a load change during the
    # run moves both sides; the baseline's rate is the mean of its two rounds
    args.baseline_rows = max(args.baseline_rows // 2, 1)
    loads = [os.getloadavg()[0]]
    base_runs = [measured("baseline", args, work)]
    loads.append(os.getloadavg()[0])
    ours = measured("ours", args, work)
    loads.append(os.getloadavg()[0])
    print("ours", ours, flush=True)
    base_runs.append(measured("baseline", args, work))
    loads.append(os.getloadavg()[0])
    print("baseline", base_runs, flush=True)
    base_rows = sum(r["rows"] for r in base_runs)
    scale = args.rows / base_rows
    base_wall = sum(r["wall_s"] for r in base_runs) * scale
    base_cpu = sum(r["cpu_s"] for r in base_runs) * scale
    note = "" if scale == 1 else f" (2 rounds of {base_runs[0]['rows']:,} rows, time scaled x{scale:.0f})"
    speedup = base_wall / ours["wall_s"]
    summary = ours["summary"]
    phases = summary.get("fit_seconds", {})
    fit_s = sum(phases.values())
    table = "\n".join([
        "| method | rows | wall s | CPU s (all processes) | rows/s | rows marked duplicate | peak RSS (process tree) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| `curate dedup minhash` (runner, 2 workers) | {ours['rows']:,} | {ours['wall_s']:.1f} | {ours['cpu_s']:.0f} | "
        f"{ours['rows'] / ours['wall_s']:,.0f} | {ours['removed']:,} | {ours['peak_rss_mib']:,.0f} MiB |",
        f"| baseline: datasketch MinHash + MinHashLSH{note} | {args.rows:,} | {base_wall:.1f} | {base_cpu:.0f} | "
        f"{args.rows / base_wall:,.0f} | {sum(r['removed'] for r in base_runs):,} of {base_rows:,} | "
        f"{max(r['peak_rss_mib'] for r in base_runs):,.0f} MiB |",
    ])
    md = f"""## MinHash near-dup dedup (`bench/minhash_bench.py`)

Machine: {machine()}, shared with other jobs: 1-minute load average {", ".join(f"{x:.1f}" for x in loads)}
(before the first baseline round, before ours, after ours, after the second baseline round).
{args.rows:,} synthetic traces (40-400 words drawn from the vocabulary of real traces; 8% lightly
edited copies, 2% verbatim copies), threshold {args.threshold}, 128 permutations, 5-word shingles,
LSH b={summary.get('bands')} r={summary.get('rows')}. Goal: at least 20x faster than datasketch, peak
RSS under 4 GiB.

{table}

Speed-up: **{speedup:.1f}x** wall, {base_cpu / ours['cpu_s']:.1f}x in CPU seconds. Ours also checks every
candidate pair's exact Jaccard ({summary.get('candidate_pairs', 0):,} candidate pairs,
{summary.get('linked_pairs', 0):,} kept) and writes the whole dataset with its score columns; the
baseline links every LSH hit unchecked and writes only trace ids and cluster ids.
Where our {ours['wall_s']:.0f} s go: fit {fit_s:.0f} s (signatures pass {phases.get('signatures', 0):.0f} s:
a worker process per core, a shard at a time: read, tokenise, rensa, band keys, shingle hashes
spilled to scratch; gathering the candidates' spilled shingle sets for the exact Jaccard
{phases.get('candidate_reread', 0):.0f} s; buckets, Jaccard, components, survivors
{phases.get('graph_and_survivors', 0):.0f} s), then {ours['wall_s'] - fit_s:.0f} s for the runner's
process pass (2 worker processes: read every shard's columns, join the state, write the shards).
Algorithm id: `{summary.get('algorithm')}`.

CPU seconds per million rows of our steps, one thread, on {min(args.rows, 200_000):,} rows
(`--profile`; the machine's load does not move these much):

{cpu_profile(work, min(args.rows, 200_000))}
"""
    print(md)
    if not args.no_write:
        write_section("minhash", md)


if __name__ == "__main__":
    main()
