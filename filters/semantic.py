"""`curate dedup semantic`: near-duplicates by meaning (sentence embeddings + FAISS), SemDeDup-style.

1. Embed each distinct unit once, batch by batch as the fit streams (prompt: one text per
   problem; response: reasoning + answer per trace), with `embeddings.embed_texts` (cached in
   Parquet per model when `cache_dir` is set).
2. Neighbours (`similar_pairs`): up to `exact_max` units, exact inner-product search over all
   (IndexFlatIP). Above, SemDeDup's layout: spherical k-means into about sqrt(N) clusters
   (FAISS, trained on a sample), then exact search inside clusters only; `nprobe` > 1 also
   searches each unit against its next-nearest clusters, for pairs split by a cluster border.
   Queries go in bounded batches and only pairs at or above the threshold are kept, so memory is
   the vectors plus one batch of results: never an N x N matrix.
3. Pairs at or above `threshold` cosine are linked; connected components are clusters whose
   survivor is a verified unit first, then the shortest text, then the smallest id.

Columns: semantic__cluster_id (the survivor's problem_id or trace_id), semantic__nn_similarity
(cosine to the nearest other unit found), semantic__is_survivor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field
from tqdm import tqdm

from curate.filters.dedup_state import join_sorted, sorted_state
from curate.filters.embeddings import DEFAULT_MODEL, embed_texts
from curate.filters.minhash import components
from curate.filters.text_norm import response_text
from curate.filters.verdicts import verified_expr
from curate.stage import BatchResult, Stage, StageConfig

_QUERY_BATCH = 16384


class SemanticConfig(StageConfig):
    model: str = Field(DEFAULT_MODEL, description="Embedding model: all-MiniLM-L6-v2 (default), static (model2vec: "
                                                  "fast but poor at duplicates, see docs/dedup.md), a "
                                                  "sentence-transformers name or a local path.")
    field: str = Field("prompt", description="prompt (one unit per problem) or response (one per trace).")
    threshold: float = Field(0.95, description="Cosine similarity at and above which two units are duplicates.")
    exact_max: int = Field(100_000, description="Up to this many units, exact search over all; above, k-means "
                                                "clusters (SemDeDup).")
    clusters: int | None = Field(None, description="k-means clusters above exact_max (default: sqrt(N)).")
    nprobe: int = Field(1, description="Clusters each unit is searched in (1 = its own, as SemDeDup).")
    neighbours: int = Field(16, description="Nearest neighbours examined per unit.")
    batch_size: int = Field(64, description="Texts per encoder batch.")
    max_chars: int = Field(2000, description="Characters of each text embedded.")
    cache_dir: str | None = Field(None, description="Embedding cache folder (Parquet per model).")

    def model_post_init(self, _ctx) -> None:
        if self.field not in ("prompt", "response"):
            raise ValueError(f"field must be prompt or response, got {self.field!r}")
        if not -1 <= self.threshold <= 1:
            raise ValueError("threshold is a cosine similarity in [-1, 1]")


def _search(index_vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray,
            k: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact search of `queries` against `index_vectors` in bounded batches: (i, j, sim) pairs at
    or above `threshold` (i != j), and each query's best similarity to another unit."""
    import faiss

    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(index_vectors)
    kk = min(k + 1, len(ids))
    src, dst, sim = [], [], []
    best = np.full(len(query_ids), -np.inf, dtype=np.float32)
    for lo in range(0, len(query_ids), _QUERY_BATCH):
        scores, idx = index.search(queries[lo: lo + _QUERY_BATCH], kk)
        rows = np.repeat(query_ids[lo: lo + _QUERY_BATCH], kk)
        cols = np.where(idx.reshape(-1) >= 0, ids[np.maximum(idx.reshape(-1), 0)], -1)
        flat = scores.reshape(-1)
        other = (cols >= 0) & (cols != rows)
        best_part = np.where(other.reshape(scores.shape), scores, -np.inf).max(axis=1)
        best[lo: lo + _QUERY_BATCH] = best_part
        keep = other & (flat >= threshold)
        src.append(rows[keep])
        dst.append(cols[keep])
        sim.append(flat[keep])
    return np.concatenate(src), np.concatenate(dst), np.concatenate(sim), best


def similar_pairs(vectors: np.ndarray, *, threshold: float, k: int = 16, exact_max: int = 100_000,
                  clusters: int | None = None, nprobe: int = 1, seed: int = 0, progress: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, sim) for pairs with cosine >= threshold among their k nearest, and each unit's
    nearest-neighbour similarity (nan when alone). `vectors` must be L2-normalised float32."""
    import faiss

    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    nn = np.full(n, np.nan, dtype=np.float64)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0, np.float32), nn
    ids = np.arange(n, dtype=np.int64)
    if n <= exact_max:
        src, dst, sim, best = _search(vectors, ids, vectors, ids, k, threshold)
        nn[:] = best
        return src, dst, sim, nn
    n_clusters = clusters or max(2, int(np.sqrt(n)))
    kmeans = faiss.Kmeans(dim, n_clusters, niter=10, seed=seed, spherical=True, max_points_per_centroid=64)
    kmeans.train(vectors)  # faiss samples max_points_per_centroid * k points itself
    probes = min(nprobe, n_clusters)
    assign = np.empty((n, probes), dtype=np.int64)
    for lo in range(0, n, _QUERY_BATCH * 4):
        assign[lo: lo + _QUERY_BATCH * 4] = kmeans.index.search(vectors[lo: lo + _QUERY_BATCH * 4], probes)[1]
    home = assign[:, 0]
    members_order = np.argsort(home, kind="stable")
    member_bounds = np.searchsorted(home[members_order], np.arange(n_clusters + 1))
    query_cluster = assign.reshape(-1)
    query_unit = np.repeat(ids, probes)
    query_order = np.argsort(query_cluster, kind="stable")
    query_bounds = np.searchsorted(query_cluster[query_order], np.arange(n_clusters + 1))
    src, dst, sim = [], [], []
    best = np.full(n, -np.inf, dtype=np.float32)
    for c in tqdm(range(n_clusters), desc="semantic clusters", disable=not progress, leave=False):
        members = members_order[member_bounds[c]: member_bounds[c + 1]]
        queries = query_unit[query_order[query_bounds[c]: query_bounds[c + 1]]]
        if len(members) == 0 or len(queries) == 0:
            continue
        s, d, v, b = _search(vectors[members], members, vectors[queries], queries, k, threshold)
        src.append(s)
        dst.append(d)
        sim.append(v)
        np.maximum.at(best, queries, b)
    nn[:] = np.where(np.isfinite(best), best, np.nan)
    if not src:
        return empty, empty, np.zeros(0, np.float32), nn
    return np.concatenate(src), np.concatenate(dst), np.concatenate(sim), nn


class SemanticDedupStage(Stage[SemanticConfig]):
    name = "dedup_semantic"
    version = "2"
    config_model = SemanticConfig
    description = ("Semantic near-duplicates with sentence embeddings and FAISS (exact search, or SemDeDup-style "
                   "k-means clusters at scale); one survivor per cluster.")
    example = "curate dedup semantic runs/demo/03-verify_math --field prompt --threshold 0.95"
    cli = ("dedup", "semantic")
    requires = ("trace_id", "problem_id")
    fit_columns = ("trace_id", "problem_id", "prompt", "reasoning", "answer")
    fit_optional_columns = ("math__verdict", "code__verdict")
    score_namespace = "semantic"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("cluster_id"), pa.string()), pa.field(self.col("nn_similarity"), pa.float64()),
                pa.field(self.col("is_survivor"), pa.bool_())]

    def _key(self) -> str:
        return "problem_id" if self.config.field == "prompt" else "trace_id"

    def fit(self, batches: Iterable[pa.RecordBatch]) -> pa.Table:
        cfg = self.config
        key = self._key()
        text = pl.col("prompt") if cfg.field == "prompt" else response_text(pl.col("reasoning"), pl.col("answer"))
        seen = pl.Series(key, [], dtype=pl.Utf8)
        units, vectors, owners = [], [], []
        for batch in tqdm(batches, desc="semantic embeddings", unit="batch", disable=None, leave=False):
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            owners.append(frame.select("trace_id", key, verified_expr(frame.columns).alias("_ok"))
                          if key != "trace_id" else frame.select("trace_id", verified_expr(frame.columns).alias("_ok")))
            fresh = frame.select(key, text.fill_null("").alias("_text")).unique(key, keep="first", maintain_order=True)
            fresh = fresh.filter(~pl.col(key).is_in(seen.implode()))
            if fresh.height == 0:
                continue
            seen = pl.concat([seen, fresh[key]])
            vectors.append(embed_texts(fresh["_text"].to_list(), model=cfg.model, batch_size=cfg.batch_size,
                                       cache_dir=cfg.cache_dir, max_chars=cfg.max_chars))
            units.append(fresh.select(key, pl.col("_text").str.len_chars().alias("_len")))
        if not units:
            return pa.schema([pa.field("trace_id", pa.string()), *self.output_fields()]).empty_table()
        unit_frame = pl.concat(units)
        owner_frame = pl.concat(owners)
        ok = owner_frame.group_by(key).agg(pl.col("_ok").any())
        unit_frame = unit_frame.join(ok, on=key, how="left", maintain_order="left").with_columns(
            pl.col("_ok").fill_null(False))
        matrix = np.concatenate(vectors)
        del vectors
        src, dst, sim, nn = similar_pairs(matrix, threshold=cfg.threshold, k=cfg.neighbours,
                                          exact_max=cfg.exact_max, clusters=cfg.clusters, nprobe=cfg.nprobe,
                                          progress=unit_frame.height > 100_000)
        labels = components(unit_frame.height, src, dst)
        ranked = unit_frame.with_columns(
            pl.Series("_cluster", labels), pl.Series(self.col("nn_similarity"), nn).fill_nan(None),
        ).with_columns(
            pl.col(key).sort_by(["_ok", "_len", key], descending=[True, False, False]).first().over("_cluster")
            .alias(self.col("cluster_id")))
        self._fit_stats = {"units": unit_frame.height, "linked_pairs": int(len(src)),
                           "units_in_duplicate_clusters": int(ranked.filter(
                               pl.len().over("_cluster") > 1).height)}
        per_unit = ranked.select(key, self.col("cluster_id"), self.col("nn_similarity"),
                                 (pl.col(key) == pl.col(self.col("cluster_id"))).alias(self.col("is_survivor")))
        if key == "trace_id":
            return per_unit.to_arrow()
        return owner_frame.select("trace_id", key).unique("trace_id", keep="first").join(
            per_unit, on=key, how="left").drop(key).to_arrow()

    def summarize(self, counts) -> dict:
        return {"model": self.config.model, **getattr(self, "_fit_stats", {})}

    def load_state(self, state: pa.Table | None) -> None:
        self.state = state
        self._sorted = sorted_state(state)

    def process(self, batch: pa.Table) -> BatchResult:
        table, out = join_sorted(batch, self._sorted)
        counts = Counter(not_survivor=int((~out[self.col("is_survivor")].fill_null(True)).sum()))
        return BatchResult(table, counts=counts)
