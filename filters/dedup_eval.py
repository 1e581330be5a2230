"""Labelled near-duplicate pairs built from real text, and precision/recall of a clustering.

How the set is built (`labelled_set`): real texts (teacher traces, worked solutions, problems) are
the originals. Each original gets one copy with a known share of its words edited (deleted,
substituted by a word from the corpus, inserted, or swapped with its neighbour) plus formatting
noise that normalisation must absorb (case of the first letter, doubled spaces, LaTeX spacing
`\\,`). Copies edited at most `dup_max_rate` are labelled duplicates of their original; the
negatives are every other pair of originals, including the hard ones: different teachers'
traces for the same problem, and template problems that differ in a number or two.

A pair of originals that is itself a near-copy in the source data (exact word 5-gram Jaccard at
or above the threshold; e.g. two Sky-T1 variants that wrote the same trace) is reported apart as a
"source duplicate", not counted as a false positive.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl

DATA = Path("/work/shared/data")
EDIT_RATES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10, 0.20)


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle.read().split("\n") if line.strip()]


def real_traces(limit_per_source: int = 400, seed: int = 0) -> pl.DataFrame:
    """(id, group, source, text): teacher traces of the same problems (SkyThought outputs; group =
    the problem, so same-group pairs are the hard negatives), GSM8K and AIME worked solutions."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in ("skythought_aime24_multimodel_outputs.jsonl.gz", "skythought_amc23_multimodel_outputs.jsonl.gz"):
        for r in _jsonl(DATA / "traces" / name):
            rows.append((f"{r['benchmark']}-{r['idx']}", "skythought", r["response"]))
    for i, r in enumerate(_jsonl(DATA / "train" / "gsm8k_train.jsonl")):
        rows.append((f"gsm8k-{i}", "gsm8k", r["answer"]))
    for i, r in enumerate(_jsonl(DATA / "train" / "rllm_aime_1983_2023.jsonl")):
        if r.get("solution"):
            rows.append((f"aime-{i}", "aime", r["solution"]))
    frame = pl.DataFrame(rows, schema=["group", "source", "text"], orient="row")
    frame = frame.filter(pl.col("text").str.split(" ").list.len() >= 30).unique("text", maintain_order=True)
    picked = [g.sample(min(limit_per_source, g.height), seed=int(rng.integers(1 << 31)))
              for _, g in frame.group_by("source", maintain_order=True)]
    return pl.concat(picked).with_row_index("n").select(
        pl.format("o{}", "n").alias("id"), "group", "source", "text")


def real_problems(limit: int = 1000, seed: int = 0) -> pl.DataFrame:
    """(id, group, source, text): MATH train problems and GSM8K questions (each its own group)."""
    math = [r["problem"] for r in _jsonl(DATA / "train" / "rllm_math_train.jsonl.gz")]
    gsm = [r["question"] for r in _jsonl(DATA / "train" / "gsm8k_train.jsonl")]
    frame = pl.DataFrame({"text": math + gsm, "source": ["math"] * len(math) + ["gsm8k"] * len(gsm)})
    frame = frame.unique("text", maintain_order=True).sample(min(limit, frame.height), seed=seed)
    return frame.with_row_index("n").select(pl.format("o{}", "n").alias("id"), pl.format("g{}", "n").alias("group"),
                                            "source", "text")


def edited_copy(text: str, rate: float, rng: np.random.Generator, vocab: list[str]) -> str:
    """`text` with about `rate` of its words edited, plus formatting noise that is not an edit."""
    words = text.split(" ")
    out: list[str] = []
    i = 0
    while i < len(words):
        if rng.random() >= rate:
            out.append(words[i])
            i += 1
            continue
        op = rng.integers(4)
        if op == 0:  # delete
            i += 1
        elif op == 1:  # substitute
            out.append(vocab[rng.integers(len(vocab))])
            i += 1
        elif op == 2:  # insert
            out.extend([vocab[rng.integers(len(vocab))], words[i]])
            i += 1
        else:  # swap with the next word
            out.extend(words[i:i + 2][::-1])
            i += 2
    copy = " ".join(out)
    # formatting noise: a doubled space, LaTeX thin space, first letter's case
    copy = copy.replace(". ", ".  ", 1).replace("$ ", "$ \\, ", 1)
    return copy[:1].swapcase() + copy[1:]


def labelled_set(originals: pl.DataFrame, *, rates: tuple[float, ...] = EDIT_RATES, dup_max_rate: float = 0.03,
                 seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, copies): rows = originals + one edited copy each (id, group, source, text);
    copies = (id, original, rate, is_dup) for every copy."""
    rng = np.random.default_rng(seed)
    vocab = originals["text"].str.split(" ").explode().unique().sort().to_list()
    texts = originals["text"].to_list()
    rate_of = rng.choice(np.asarray(rates), size=len(texts))
    copies = [edited_copy(t, float(r), rng, vocab) for t, r in zip(texts, rate_of, strict=True)]
    copy_rows = originals.select(
        pl.format("c{}", pl.col("id").str.slice(1)).alias("id"), "group", "source", pl.Series("text", copies))
    labels = pl.DataFrame({"id": copy_rows["id"], "original": originals["id"], "rate": rate_of,
                           "is_dup": rate_of <= dup_max_rate})
    return pl.concat([originals, copy_rows]), labels


def pairs_in_clusters(ids: pl.Series, clusters: pl.Series) -> pl.DataFrame:
    """Every pair (a < b) of ids that share a cluster (clusters are small: near-dup groups)."""
    frame = pl.DataFrame({"id": ids, "c": clusters})
    sizes = frame.group_by("c").len()
    frame = frame.join(sizes.filter(pl.col("len") > 1), on="c").select("id", "c")
    pairs = frame.join(frame, on="c", suffix="_b").filter(pl.col("id") < pl.col("id_b"))
    return pairs.select(pl.col("id").alias("a"), pl.col("id_b").alias("b"))


def text_jaccard(a: list[str], b: list[str], ngram: int = 5) -> np.ndarray:
    """Exact word n-gram Jaccard of each (a[i], b[i]), with MinHash dedup's tokeniser."""
    from curate.filters.minhash import shingle_hashes

    ha, oa, _ = shingle_hashes(pl.Series(a, dtype=pl.Utf8), ngram)
    hb, ob, _ = shingle_hashes(pl.Series(b, dtype=pl.Utf8), ngram)
    out = np.zeros(len(a))
    for i in range(len(a)):  # evaluation only: a few hundred pairs
        sa, sb = set(ha[oa[i]:oa[i + 1]].tolist()), set(hb[ob[i]:ob[i + 1]].tolist())
        out[i] = len(sa & sb) / max(1, len(sa | sb))
    return out


def precision_recall(rows: pl.DataFrame, labels: pl.DataFrame, clusters: pl.Series, *,
                     source_threshold: float | None = None, ngram: int = 5) -> dict:
    """Pair-level precision and recall of `clusters` (aligned with `rows`) against the labels.
    Precision: share of predicted pairs that derive from one original (a copy at any edit rate
    and its original), or, with `source_threshold`, whose texts are near-copies already in the
    source data (exact n-gram Jaccard at or above it: real duplicates the labels do not know).
    Recall: share of copies labelled duplicates (edit rate <= dup_max_rate) that share their
    original's cluster."""
    predicted = pairs_in_clusters(rows["id"], clusters)
    root = rows.select("id").join(labels.select("id", pl.col("original").alias("o")), on="id", how="left").select(
        "id", pl.coalesce("o", "id").alias("root"))
    judged = predicted.join(root.rename({"id": "a", "root": "ra"}), on="a").join(
        root.rename({"id": "b", "root": "rb"}), on="b").with_columns((pl.col("ra") == pl.col("rb")).alias("ok"))
    wrong = judged.filter(~pl.col("ok"))
    explained = 0
    if source_threshold is not None and wrong.height:
        text = dict(zip(rows["id"].to_list(), rows["text"].to_list(), strict=True))
        sims = text_jaccard([text[a] for a in wrong["a"]], [text[b] for b in wrong["b"]], ngram)
        explained = int((sims >= source_threshold).sum())
    cluster_of = pl.DataFrame({"id": rows["id"], "c": clusters})
    per_copy = labels.join(cluster_of, on="id").join(cluster_of.rename({"id": "original", "c": "c_o"}),
                                                     on="original").with_columns((pl.col("c") == pl.col("c_o")).alias("hit"))
    dups = per_copy.filter("is_dup")
    per_rate = per_copy.group_by("rate").agg(pl.col("hit").mean().alias("detected"), pl.len().alias("n")).sort("rate")
    tp = int(judged["ok"].sum())
    return {
        "predicted_pairs": judged.height,
        "false_pairs": wrong.height - explained,
        "source_duplicate_pairs": explained,
        "precision": (tp + explained) / judged.height if judged.height else 1.0,
        "recall": float(dups["hit"].mean()) if dups.height else 1.0,
        "dup_pairs": dups.height,
        "per_rate": per_rate.rows(),
        "false_examples": wrong.head(5).rows(),
    }
