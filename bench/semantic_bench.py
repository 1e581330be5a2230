"""Semantic dedup: (A) duplicate-finding quality and speed of MiniLM vs the static model on
labelled pairs built from real problems; (B) FAISS neighbour search on N x 384 vectors.

(A) Originals: real MATH-train and GSM8K problems (/work/shared/data/train). Each gets one copy
    with a known share of words edited plus formatting noise (`filters/dedup_eval.py`); copies
    edited <= 3% are duplicates, all other pairs of problems are not (MATH's template problems
    that differ only in numbers are the hard negatives). Precision/recall of `dedup_semantic`'s
    clustering at several cosine thresholds, for each model, and encoding speed.
(B) N unit vectors in 384 dims drawn around 2,000 topic centres (like real embeddings, which
    cluster), with 1% planted near-copies. Ours: `similar_pairs` (k-means into sqrt(N) clusters,
    exact search inside each, bounded query batches). Baseline in the same run: brute-force
    exact k-NN over all vectors (IndexFlatIP), run on `--baseline-rows` and scaled by (N/M)^2.

    python bench/semantic_bench.py [--vectors 1000000] [--problems 600] [--baseline-rows 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import PeakRSS, machine, write_section  # noqa: E402

from curate.filters import dedup_eval  # noqa: E402
from curate.filters.embeddings import embed_texts  # noqa: E402
from curate.filters.minhash import components  # noqa: E402
from curate.filters.semantic import similar_pairs  # noqa: E402

THRESHOLDS = (0.80, 0.85, 0.90, 0.95)


def quality(problems: int) -> str:
    originals = dedup_eval.real_problems(problems, seed=0)
    rows, labels = dedup_eval.labelled_set(originals, seed=0)
    texts = rows["text"].to_list()
    lines = ["| model | texts/s | threshold | precision | recall (<=3% edits) | detected at 5% / 10% edits | false pairs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model in ("all-MiniLM-L6-v2", "static"):
        embed_texts(texts[:8], model=model)  # load the model outside the timing
        t = time.perf_counter()
        vectors = embed_texts(texts, model=model)
        speed = len(texts) / (time.perf_counter() - t)
        for threshold in THRESHOLDS:
            src, dst, _, _ = similar_pairs(vectors, threshold=threshold)
            labels_ = components(len(texts), src, dst)
            got = dedup_eval.precision_recall(rows, labels, pl.Series(labels_).cast(pl.Utf8))
            by_rate = {r: d for r, d, _ in got["per_rate"]}
            lines.append(f"| {model} | {speed:,.0f} | {threshold} | {got['precision']:.3f} | {got['recall']:.3f} | "
                         f"{by_rate.get(0.05, 0):.2f} / {by_rate.get(0.1, 0):.2f} | {got['false_pairs']} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def planted_vectors(n: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):  # bounded temporaries
        hi = min(n, lo + 100_000)
        vectors[lo:hi] = centres[rng.integers(0, 2000, hi - lo)] + rng.normal(size=(hi - lo, dim)).astype(np.float32)
    planted = rng.choice(n, size=n // 100, replace=False)
    sources = rng.integers(0, n, size=len(planted))
    vectors[planted] = vectors[sources] + 0.05 * rng.normal(size=(len(planted), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, np.stack([planted, sources], axis=1)


def faiss_scale(n: int, baseline_rows: int, threshold: float) -> str:
    import faiss

    vectors, planted = planted_vectors(n)
    with PeakRSS() as rss:
        t = time.perf_counter()
        src, dst, sim, nn = similar_pairs(vectors, threshold=threshold, exact_max=100_000, progress=True)
        wall = time.perf_counter() - t
    found = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}
    recall = np.mean([(min(a, b), max(a, b)) in found for a, b in planted.tolist() if a != b])
    m = min(baseline_rows, n)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors[:m])
    index.search(vectors[:m], 17)
    base = (time.perf_counter() - t) * (n / m) ** 2
    scaled = "" if m == n else f" ({m:,} vectors run, time scaled x{(n / m) ** 2:,.0f})"
    return "\n".join([
        "| method | vectors | wall s | peak RSS | planted pairs found |",
        "|---|---:|---:|---:|---:|",
        f"| ours: k-means {int(np.sqrt(n)):,} clusters, exact search within | {n:,} | {wall:.1f} | "
        f"{rss.peak_total / 2**20:,.0f} MiB (vectors alone: {vectors.nbytes / 2**20:,.0f} MiB) | {recall:.3f} |",
        f"| baseline: brute-force exact k-NN (IndexFlatIP){scaled} | {n:,} | {base:,.0f} | - | 1.000 |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--problems", type=int, default=600)
    parser.add_argument("--baseline-rows", type=int, default=50_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    quality_table = "(not run)" if args.skip_quality else quality(args.problems)
    scale_table = faiss_scale(args.vectors, args.baseline_rows, args.threshold)
    print(scale_table)
    md = f"""## Semantic dedup (`bench/semantic_bench.py`)

Machine: {machine()}.

### Duplicate-finding quality: MiniLM vs the static model

{args.problems} real problems (MATH train, GSM8K train) plus one edited copy each (a known share of
words deleted/substituted/inserted/swapped, plus case, spacing and LaTeX-spacing noise). Copies with at
most 3% of words edited are the duplicates; every other pair of problems is a non-duplicate (MATH's
template problems that differ in a number are the hard negatives). Exact search, connected components.

{quality_table}

### FAISS neighbour search at scale (threshold {args.threshold})

{args.vectors:,} unit vectors x 384 around 2,000 topic centres, 1% planted near-copies (noise 0.05).
Goal: under 5 minutes for 1,000,000 vectors, memory bounded (never N x N).

{scale_table}
"""
    print(md)
    if not args.no_write:
        write_section("semantic", md)


if __name__ == "__main__":
    main()
