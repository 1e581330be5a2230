"""Stream 1,000,000 synthetic traces through the import stage and a no-op stage.

Measures rows/s and peak RSS (runner process and largest worker) with the local process pool,
against a baseline in the same run: reading the whole file into one table with polars and
writing it back (what a script without a runner does, memory growing with the input).

    python bench/runner_bench.py [--rows 1000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import PeakRSS, machine, write_section  # noqa: E402

from curate.builtin import PassthroughStage  # noqa: E402
from curate.executors import LocalExecutor  # noqa: E402
from curate.generators.importer import ImportConfig, ImportTracesStage  # noqa: E402
from curate.runner import run_stage  # noqa: E402


def make_jsonl(path: Path, rows: int) -> None:
    rng = random.Random(0)
    teachers = ["deepseek-r1", "qwq-32b", "qwen3-235b"]
    with open(path, "w") as handle:
        for i in range(rows):
            steps = " ".join(f"step {j}: {rng.randint(0, 999)}" for j in range(20))
            handle.write(json.dumps({
                "messages": [
                    {"role": "user", "content": f"Problem {i // 3}: compute {rng.randint(0, 10**6)} mod 7."},
                    {"role": "assistant", "content": f"<think>{steps}</think>The answer is \\boxed{{{i % 7}}}."},
                ],
                "teacher": teachers[i % 3],
            }) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        src = work / "traces.jsonl"
        t = time.perf_counter()
        make_jsonl(src, args.rows)
        print(f"wrote {args.rows:,} synthetic traces ({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f}s")
        results = []
        executor = LocalExecutor(args.workers)
        cfg = ImportConfig(paths=[str(src)], preset="messages", columns={"teacher": "teacher"}, domain="math")
        with PeakRSS() as rss:
            t = time.perf_counter()
            m = run_stage(ImportTracesStage(cfg), out_dir=work / "01-import", executor=executor, progress=False)
            dt = time.perf_counter() - t
        results.append(("import (JSONL messages -> traces)", m.rows_out, dt, rss))
        with PeakRSS() as rss:
            t = time.perf_counter()
            m = run_stage(PassthroughStage(), input_dir=work / "01-import", out_dir=work / "02-noop",
                          executor=executor, progress=False)
            dt = time.perf_counter() - t
        results.append(("no-op stage (Parquet -> Parquet)", m.rows_out, dt, rss))
        with PeakRSS() as rss:
            t = time.perf_counter()
            frame = pl.read_parquet(work / "01-import" / "part-*.parquet")
            frame.write_parquet(work / "baseline.parquet", compression="zstd")
            rows, dt = frame.height, time.perf_counter() - t
            del frame
        results.append(("baseline: whole-table polars read + write", rows, dt, rss))

        lines = ["| workload | rows | wall s | rows/s | peak RSS runner | peak RSS largest worker | peak RSS total |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for name, rows, dt, r in results:
            lines.append(f"| {name} | {rows:,} | {dt:.1f} | {rows / dt:,.0f} | {r.peak_parent / 2**20:,.0f} MiB | "
                         f"{r.peak_child / 2**20:,.0f} MiB | {r.peak_total / 2**20:,.0f} MiB |")
        table = "\n".join(lines)
        print(table)
        write_section("runner", f"""
## Runner: streaming 1M traces with bounded memory (`bench/runner_bench.py`)

Machine: {machine()}; local process pool with {args.workers} workers; {args.rows:,} synthetic traces
(OpenAI `messages` JSONL, {src.stat().st_size / 2**20:.0f} MiB). Goals: no-op stage at least 200k rows/s, peak RSS under 1 GiB.

{table}

The runner's memory is flat in the input size: each worker holds one batch (`batch_rows`) and one
shard writer; the baseline holds the whole table.
""")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
