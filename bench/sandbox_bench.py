"""Sandboxed test cases per second for trivial Python programs, against the naive baseline of
one `subprocess.run` per case (no sandbox at all), measured in the same run.

    .venv/bin/python bench/sandbox_bench.py                      # 60 programs x 20 cases
    .venv/bin/python bench/sandbox_bench.py --programs 500 --cases 20 --isolation unshare

Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402

from curate.sandbox.launch import interpreter  # noqa: E402
from curate.sandbox.limits import Limits  # noqa: E402
from curate.sandbox.pool import Case, ProgramJob, SandboxPool  # noqa: E402
from curate.verifiers.testspec import outputs_match  # noqa: E402

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def cases_for(program: int, n: int) -> list[tuple[str, str]]:
    return [(f"{program} {i}\n", f"{program + i}\n") for i in range(n)]


def baseline(python: str, programs: int, cases: int) -> tuple[float, int]:
    started, ok = time.perf_counter(), 0
    for p in range(programs):
        for stdin, expected in cases_for(p, cases):
            proc = subprocess.run([python, "-I", "-S", "-c", PROGRAM], input=stdin, capture_output=True,
                                  text=True, timeout=10)
            ok += proc.returncode == 0 and outputs_match(proc.stdout, expected)
    return time.perf_counter() - started, ok


def sandboxed(pool: SandboxPool, programs: int, cases: int) -> tuple[float, int]:
    jobs = []
    for p in range(programs):
        pairs = cases_for(p, cases)
        jobs.append(ProgramJob(
            program=PROGRAM, mode="stdio", cases=[Case(stdin=s) for s, _ in pairs],
            judge=lambda i, r, pairs=pairs: r.get("exit_code") == 0 and outputs_match(r["stdout"], pairs[i][1]),
        ))
    started = time.perf_counter()
    ok = sum(sum(run.passed) for run in pool.run_many(jobs))
    return time.perf_counter() - started, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=60)
    parser.add_argument("--cases", type=int, default=20, help="test cases per program")
    parser.add_argument("--baseline-programs", type=int, default=10,
                        help="programs for the (slow) baseline; its rate does not depend on the count")
    parser.add_argument("--isolation", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()

    python = interpreter()
    load_before = os.getloadavg()[0]
    rows = []
    base_s, base_ok = baseline(python, args.baseline_programs, args.cases)
    base_n = args.baseline_programs * args.cases
    base_rate = base_n / base_s
    rows.append(("baseline: one `subprocess.run` per case, no sandbox", base_n, base_ok, base_s, base_rate, 1.0))
    with SandboxPool(limits=Limits(timeout_s=5), isolation=args.isolation, workers=args.workers) as pool:
        level, workers = pool.level, pool.workers
        sb_s, sb_ok = sandboxed(pool, args.programs, args.cases)
    sb_n = args.programs * args.cases
    sb_rate = sb_n / sb_s
    rows.append((f"warm sandbox ({level}), {workers} workers, fork per case", sb_n, sb_ok, sb_s, sb_rate,
                 sb_rate / base_rate))

    table = ["| workload | cases | passed | wall s | cases/s | vs baseline |", "|---|---:|---:|---:|---:|---:|"]
    for name, n, ok, secs, rate, ratio in rows:
        table.append(f"| {name} | {n:,} | {ok:,} | {secs:.2f} | {rate:,.1f} | {ratio:.1f}x |")
    print("\n".join(table))
    if base_ok != base_n or sb_ok != sb_n:
        print("WARNING: some cases failed", file=sys.stderr)
    if not args.no_write:
        write_section("sandbox", "\n".join([
            "## Sandbox: test cases per second (`bench/sandbox_bench.py`)",
            "",
            f"Machine: {machine()}, shared with other jobs (load average {load_before:.1f} at the start). Trivial stdin/stdout Python program (`a + b`), {args.cases} cases per "
            f"program, {args.programs} programs sandboxed; the baseline runs {args.baseline_programs} programs' "
            "cases with one `subprocess.run` each (same interpreter, no isolation). Goal: at least 5x.",
            "",
            *table,
            "",
            "Each sandboxed program gets one warm interpreter (bubblewrap or the fallback level shown) that",
            "compiles it once and forks per case; the start-up of the sandbox is paid once per program.",
        ]))


if __name__ == "__main__":
    main()
