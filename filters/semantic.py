"""`curate dedup semantic`: near-duplicates by meaning (embeddings + FAISS), SemDeDup-style.

* Embeds distinct texts (prompt: one per problem; response: one per trace) with `embeddings`.
* Up to `exact_max` items: exact inner-product search (IndexFlatIP). Above: k-means into about
  sqrt(N) clusters with FAISS, then exact search inside each cluster only, so memory is bounded by
  the largest cluster, never N x N.
* Pairs at or above `threshold` cosine are linked; connected components become clusters whose
  survivor is verified first, then shortest.

Columns: semantic__cluster_id (the survivor's id), semantic__nn_similarity (cosine to the nearest
other item), semantic__is_survivor.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.filters.embeddings import DEFAULT_MODEL, embed_texts
from curate.filters.minhash import components
from curate.filters.text_norm import response_text
from curate.filters.verdicts import verified_expr
from curate.stage import BatchResult, Stage, StageConfig


class SemanticConfig(StageConfig):
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model name or path.")
    field: str = Field("prompt", description="prompt (problem-level) or response (trace-level).")
    threshold: float = Field(0.95, description="Cosine similarity at and above which items are duplicates.")
    exact_max: int = Field(100_000, description="Up to this many items, exact search; above, k-means clusters.")
    neighbours: int = Field(8, description="Neighbours searched per item.")
    batch_size: int = 64


def neighbour_pairs(vectors: np.ndarray, *, k: int, exact_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) of each item's k nearest others."""
    import faiss

    n, dim = vectors.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.array([], int), np.array([], int), np.array([], np.float32)
    if n <= exact_max:
        groups = [np.arange(n)]
    else:
        kmeans = faiss.Kmeans(dim, int(np.sqrt(n)), niter=10, seed=0, spherical=True)
        kmeans.train(vectors[np.random.default_rng(0).choice(n, min(n, 256 * int(np.sqrt(n))), replace=False)])
        assign = kmeans.index.search(vectors, 1)[1][:, 0]
        order = np.argsort(assign, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(assign[order])) + 1)
    src, dst, sim = [], [], []
    for members in groups:
        if len(members) < 2:
            continue
        index = faiss.IndexFlatIP(dim)
        index.add(vectors[members])
        kk = min(k + 1, len(members))
        scores, idx = index.search(vectors[members], kk)
        rows = np.repeat(members, kk)
        cols = members[idx.reshape(-1)]
        keep = (idx.reshape(-1) >= 0) & (rows != cols)
        src.append(rows[keep])
        dst.append(cols[keep])
        sim.append(scores.reshape(-1)[keep])
    if not src:
        return np.array([], int), np.array([], int), np.array([], np.float32)
    return np.concatenate(src), np.concatenate(dst), np.concatenate(sim)


class SemanticDedupStage(Stage[SemanticConfig]):
    name = "dedup_semantic"
    version = "1"
    config_model = SemanticConfig
    description = "Semantic near-duplicates with sentence embeddings and FAISS (exact, or k-means clusters at scale)."
    example = "curate dedup semantic runs/demo --field prompt --threshold 0.95"
    cli = ("dedup", "semantic")
    requires = ("trace_id", "problem_id")
    fit_columns = ("trace_id", "problem_id", "prompt", "reasoning", "answer")
    fit_optional_columns = ("math__verdict", "code__verdict")
    score_namespace = "semantic"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("cluster_id"), pa.string()), pa.field(self.col("nn_similarity"), pa.float64()),
                pa.field(self.col("is_survivor"), pa.bool_())]

    def fit(self, batches) -> pa.Table:
        cfg = self.config
        frame = pl.concat([pl.from_arrow(pa.Table.from_batches([b])) for b in batches], how="diagonal_relaxed")
        key = "problem_id" if cfg.field == "prompt" else "trace_id"
        text = pl.col("prompt") if cfg.field == "prompt" else response_text(pl.col("reasoning"), pl.col("answer"))
        units = frame.with_columns(text.alias("_text"), verified_expr(frame.columns).alias("_ok")).group_by(
            key, maintain_order=True).agg(pl.col("_text").first(), pl.col("_ok").any())
        vectors = embed_texts(units["_text"].to_list(), model=cfg.model, batch_size=cfg.batch_size)
        src, dst, sim = neighbour_pairs(vectors, k=cfg.neighbours, exact_max=cfg.exact_max)
        nn = np.zeros(units.height, dtype=np.float64)
        if len(src):
            np.maximum.at(nn, src, sim)
        linked = sim >= cfg.threshold
        labels = components(units.height, src[linked], dst[linked])
        ranked = units.with_columns(
            pl.Series("_cluster", labels), pl.Series(self.col("nn_similarity"), nn),
            pl.col("_text").str.len_chars().alias("_len"),
        ).with_columns(
            pl.col(key).sort_by(["_ok", "_len", key], descending=[True, False, False]).first().over("_cluster")
            .alias(self.col("cluster_id")))
        per_unit = ranked.select(key, self.col("cluster_id"), self.col("nn_similarity"),
                                 (pl.col(key) == pl.col(self.col("cluster_id"))).alias(self.col("is_survivor")))
        if key == "trace_id":
            return per_unit.to_arrow()
        return frame.select("trace_id", key).unique("trace_id").join(per_unit, on=key).drop(key).to_arrow()

    def process(self, batch: pa.Table) -> BatchResult:
        out = pl.from_arrow(batch).join(pl.from_arrow(self.state), on="trace_id", how="left", maintain_order="left")
        counts = Counter(not_survivor=int((~out[self.col("is_survivor")].fill_null(True)).sum()))
        return BatchResult(out.to_arrow(), counts=counts)
