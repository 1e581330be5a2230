"""Decontamination on synthetic traces: trace-curate's `DecontaminateStage` against an open-r1-style
baseline (per benchmark, a Python set of word 8-grams; per row and benchmark, the row's 8-gram set
built again and any() over it), both in this script, on the same prompts.

Corpus: real training problems (MATH train, GSM8K train) with their numbers redrawn and an
instruction prefix, so (almost) every prompt is distinct text; `--inject` benchmark items are put
in, half verbatim and half lightly edited (number formatting, LaTeX spelling, whitespace, added
instruction text). Recall is measured on those; flags on the rest are reported as well.

    .venv/bin/python bench/decontam_bench.py --rows 1000000 --baseline-rows 1000000
    .venv/bin/python bench/decontam_bench.py --rows 100000 --baseline-rows 20000   # quick

The baseline uses a process pool of `--workers` (open-r1 maps with num_proc); when
`--baseline-rows` is below `--rows` its time is measured on that prefix and scaled linearly
(it is per-row work), which the table says.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import random
import re
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import PeakRSS, machine, write_section  # noqa: E402

from curate.filters.benchmarks import load_many  # noqa: E402
from curate.filters.decontaminate import DecontaminateConfig, DecontaminateStage  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train"
PREFIXES = ["", "Solve: ", "Problem: ", "Answer the question. ", "Think carefully. ", "Q: "]


# -- the baseline (open-r1 scripts/decontaminate.py, re-implemented) --------------------------------
def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _grams(text: str, n: int) -> set[str]:
    words = _normalise(text).split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


_LOOKUPS: dict[str, set[str]] = {}


def _init(lookups: dict[str, set[str]]) -> None:
    global _LOOKUPS
    _LOOKUPS = lookups


def _baseline_chunk(texts: list[str]) -> list[str | None]:
    flagged: list[str | None] = [None] * len(texts)
    for name, lookup in _LOOKUPS.items():  # one pass per benchmark, n-grams rebuilt each time
        for i, text in enumerate(texts):
            if any(g in lookup for g in _grams(text, 8)) and flagged[i] is None:
                flagged[i] = name
    return flagged


def baseline(texts: list[str], items: pl.DataFrame, workers: int) -> list[str | None]:
    lookups: dict[str, set[str]] = collections.defaultdict(set)
    for bench, text in items.select("benchmark", "text").iter_rows():
        lookups[bench] |= _grams(text, 8)
    size = max(1, len(texts) // (workers * 8))
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    with Pool(workers, initializer=_init, initargs=(dict(lookups),)) as pool:
        return [f for part in pool.map(_baseline_chunk, chunks) for f in part]


# -- the corpus -------------------------------------------------------------------------------------
def _edit(text: str, rng: random.Random) -> str:
    text = re.sub(r"(?<![\d.])(\d)(\d{3})(?![\d.])", r"\1,\2", text)
    text = text.replace("\\frac", "\\dfrac").replace("\\le ", "\\leq ").replace("(", "\\left(").replace(")", "\\right)")
    text = text.replace("=", " = \\, ")
    text = re.sub(r"\s+", lambda m: rng.choice(["  ", "\n", " \t "]), text)
    if rng.random() < 0.5:
        text = text.replace("$", "")
    return rng.choice(PREFIXES) + text + rng.choice(["\nPlease reason step by step.", "\nShow your work.", ""])


def corpus(rows: int, inject: int, items: pl.DataFrame, seed: int = 0) -> tuple[list[str], dict[int, tuple]]:
    def jsonl(path: Path, field: str) -> list[str]:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
        return [json.loads(line)[field] for line in text.split("\n") if line.strip()]

    templates = jsonl(SHARED / "rllm_math_train.jsonl.gz", "problem") + jsonl(SHARED / "gsm8k_train.jsonl", "question")
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    picks = nprng.integers(0, len(templates), rows)
    texts = []
    number = re.compile(r"\d+")
    for i in range(rows):  # corpus generation is not timed
        draw = iter(nprng.integers(2, 999, 64).tolist())
        texts.append(PREFIXES[i % len(PREFIXES)] + number.sub(lambda _m, d=draw: str(next(d, 7)),
                                                             templates[picks[i]]))
    chosen = items.sample(min(inject, items.height), seed=seed)
    positions = sorted(rng.sample(range(rows), chosen.height))
    truth = {}
    for k, (pos, (bench, item_id, text)) in enumerate(zip(positions, chosen.iter_rows(), strict=True)):
        edited = k % 2 == 1
        texts[pos] = _edit(text, rng) if edited else text
        truth[pos] = (bench, item_id, "edited" if edited else "verbatim")
    return texts, truth


def ours(texts: list[str], against: list[str]) -> tuple[list[str | None], list[str | None], float, dict]:
    stage = DecontaminateStage(DecontaminateConfig(against=against, fields=["prompt"]))
    table = pa.table({"prompt": texts})
    t0 = time.perf_counter()
    stage.load_state(stage.fit(table.to_batches(max_chunksize=65536)))
    outs = [stage.process(table.slice(i, 65536)).table for i in range(0, table.num_rows, 65536)]
    seconds = time.perf_counter() - t0
    out = pa.concat_tables(outs)
    return (out.column("decon__benchmark").to_pylist(), out.column("decon__item_id").to_pylist(), seconds,
            stage.summarize(collections.Counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=None, help="Rows the baseline runs on (default: all).")
    parser.add_argument("--inject", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--against", nargs="+", default=["math500", "gsm8k", "aime24", "aime25", "amc23", "minerva",
                                                          "olympiadbench"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is missing: the bench builds its corpus from the shared training problems")
    items = load_many(args.against)
    t0 = time.perf_counter()
    texts, truth = corpus(args.rows, args.inject, items)
    print(f"corpus: {len(texts):,} prompts ({len(truth)} injected) built in {time.perf_counter() - t0:.0f}s")

    with PeakRSS() as ours_rss:
        flags, item_ids, ours_s, summary = ours(texts, args.against)
    base_rows = min(args.baseline_rows or args.rows, args.rows)
    # the baseline runs on a prefix that still holds every injected item (they are moved in front)
    order = sorted(truth) + [i for i in range(len(texts)) if i not in truth]
    subset = [texts[i] for i in order[:base_rows]]
    t0 = time.perf_counter()
    base_flags_subset = baseline(subset, items, args.workers)
    base_measured = time.perf_counter() - t0
    base_s = base_measured * args.rows / base_rows
    base_flags = dict(zip(order[:base_rows], base_flags_subset, strict=True))

    def recall(kind: str, found) -> str:
        rows = [p for p, t in truth.items() if t[2] == kind]
        return f"{sum(1 for p in rows if found(p))}/{len(rows)}"

    ours_exact = lambda p: (flags[p], item_ids[p]) == truth[p][:2]  # noqa: E731
    ours_any = lambda p: flags[p] is not None  # noqa: E731
    base_any = lambda p: base_flags.get(p) is not None  # noqa: E731
    clean_ours = sum(1 for i, f in enumerate(flags) if f is not None and i not in truth)
    clean_base = sum(1 for i, f in base_flags.items() if f is not None and i not in truth)
    scaled = "" if base_rows == args.rows else f" (measured on {base_rows:,} rows, scaled)"
    table = "\n".join([
        f"Workload: {args.rows:,} synthetic prompts (MATH/GSM8K train problems with redrawn numbers) against "
        f"{', '.join(args.against)} ({items.height:,} items); {len(truth)} benchmark items injected, half verbatim, "
        f"half lightly edited. Machine: {machine()}.",
        "",
        "| | time | rows/s | recall verbatim | recall edited | flags on other rows | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| trace-curate `decontaminate` (fit + process, 1 process) | {ours_s:.1f} s | {args.rows / ours_s:,.0f} | "
        f"{recall('verbatim', ours_any)} ({recall('verbatim', ours_exact)} right item) | "
        f"{recall('edited', ours_any)} ({recall('edited', ours_exact)} right item) | {clean_ours:,} | "
        f"{ours_rss.peak_total / 2**30:.2f} GiB |",
        f"| open-r1-style 8-gram sets ({args.workers} processes) | {base_s:.1f} s{scaled} | {args.rows / base_s:,.0f} | "
        f"{recall('verbatim', base_any)} | {recall('edited', base_any)} | {clean_base:,} of {base_rows:,} | - |",
        "",
        f"Speed-up: **{base_s / ours_s:.1f}x**. Distinct texts checked: {summary.get('distinct_texts', 'n/a')}; "
        f"benchmark stop-list {summary.get('benchmark_stoplist', 'n/a')} n-grams, corpus stop-list "
        f"{summary.get('corpus_stoplist', 'n/a')}.",
    ])
    print(table)
    if not args.no_write:
        write_section("decontam", "## Decontamination (`bench/decontam_bench.py`)\n\n" + table)


if __name__ == "__main__":
    main()
