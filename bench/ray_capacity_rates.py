"""Per-core rates of every CPU stage of the demo pipeline, for the capacity plan in docs/scale-out.md.

Runs each stage of the demo (real multi-teacher math traces) in this process with every thread
pool pinned to one thread, and counts CPU seconds (this process and its reaped children, e.g. the
math verifier's sandbox pool), not wall time, so other load on the machine barely moves the
figures. Model set-up (loading an embedding model) is excluded; fits are counted.

    python bench/ray_capacity_rates.py [--run runs/demo]   # reuses a finished demo run if given
"""

from __future__ import annotations

import os

for _var in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

from curate.demo import demo_pipeline_path  # noqa: E402
from curate.executors import InProcessExecutor  # noqa: E402
from curate.io import input_files, read_unit_batches  # noqa: E402
from curate.pipeline import load_pipeline, run_pipeline  # noqa: E402
from curate.stage import SourceStage  # noqa: E402

CHARS_PER_TOKEN = 3.8  # English + LaTeX reasoning with Qwen/DeepSeek tokenizers (assumption, stated in docs)
TRACES, TOKENS, PROBLEMS = 10_000_000, 30_000_000_000, 2_500_000  # the plan: 4 traces per problem
# What each stage's cost grows with: the text (tokens), the rows (one answer per trace), or the
# distinct problems (semantic dedup over prompts embeds one text per problem).
BASIS = {"verify_math": "rows", "difficulty": "rows", "select": "rows", "dedup_semantic": "problems"}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(stage, input_dir: Path | None) -> tuple[int, float]:
    """(rows, CPU seconds) of fit + process over the step's input, setup excluded."""
    stage.setup()
    try:
        t = cpu_seconds()
        if isinstance(stage, SourceStage):
            rows = sum(r.table.num_rows for u in stage.plan() for r in stage.read_unit(u))
            return rows, cpu_seconds() - t
        files = input_files(input_dir)
        if stage.is_global:
            present = set(pq.read_schema(files[0]).names)
            cols = list(stage.fit_columns) + [c for c in stage.fit_optional_columns if c in present]
            from curate.runner import _Rescan

            stage.load_state(stage.fit(_Rescan([str(f) for f in files], cols)))
        from curate.io import plan_parquet_units

        rows = 0
        for unit in plan_parquet_units(files):
            for batch in read_unit_batches(unit, batch_rows=stage.batch_rows):
                stage.process(batch)
                rows += batch.num_rows
        return rows, cpu_seconds() - t
    finally:
        stage.teardown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None, help="a finished demo run (default: run it now)")
    args = parser.parse_args()
    pipeline = load_pipeline(demo_pipeline_path())
    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="curate-rates-")) / "demo"
        run_pipeline(pipeline, run, executor=InProcessExecutor(), progress=False)
    traces = pl.read_parquet(run / pipeline.steps[0].dirname / "part-*.parquet")
    chars = traces.select(pl.col("reasoning").str.len_chars().fill_null(0) + pl.col("answer").str.len_chars()
                          .fill_null(0)).sum().item()
    tokens_per_trace = chars / traces.height / CHARS_PER_TOKEN
    problems = traces["problem_id"].n_unique()
    lines = ["| stage | rows | CPU s | traces / core-s | MB text / core-s | grows with | core-hours, 10M traces / 30B tokens |",
             "|---|---:|---:|---:|---:|---|---:|"]
    previous = None
    for step in pipeline.steps:
        fresh = type(step.stage)(step.stage.config)
        rows, cpu = measure(fresh, run / previous.dirname if previous else None)
        per_core = rows / cpu if cpu else float("inf")
        mb = chars / 1e6 / cpu if cpu else float("inf")
        basis = BASIS.get(step.id, "tokens")
        if basis == "rows":
            hours = TRACES / per_core / 3600
        elif basis == "problems":
            hours = PROBLEMS / (problems / cpu) / 3600
        else:  # text-bound: 30B tokens against the demo's tokens per CPU second
            hours = TOKENS / (rows * tokens_per_trace / cpu) / 3600
        lines.append(f"| {step.id} | {rows:,} | {cpu:.1f} | {per_core:,.0f} | {mb:.2f} | {basis} | {hours:,.1f} |")
        print(lines[-1], flush=True)
        previous = step
    text = "\n".join([
        "## Per-core rates of the CPU stages (`bench/ray_capacity_rates.py`)\n",
        f"Machine: {machine()}. The demo's {traces.height:,} real traces (mean {tokens_per_trace:,.0f} tokens at "
        f"{CHARS_PER_TOKEN} characters per token), each stage alone, one thread, CPU seconds of the process and "
        "its children (fits included, model loading excluded). The last column scales each rate by what "
        "the stage's cost grows with to 10M traces, 30B tokens and 2.5M problems; docs/scale-out.md turns "
        "it into a capacity plan.\n",
        *lines,
    ])
    print(text)
    write_section("ray_capacity_rates", text)


if __name__ == "__main__":
    main()
