"""`curate dedup minhash`: near-duplicate traces, the whole algorithm as a few array functions.

1. `shingle_hashes`: word n-grams of normalised text, hashed to u64 (polars, vectorised).
2. `signatures`: MinHash signatures from those hashes in one call per batch (rensa, Rust).
3. `lsh_params`: bands b and rows r from the threshold (minimising weighted false positive and
   negative probability, as datasketch does).
4. `candidate_edges`: rows sharing a band bucket are linked to the bucket's first row (a star,
   so a bucket of k rows gives k-1 edges, never k^2/2 pairs).
5. `verify_edges`: the exact Jaccard of each candidate pair's shingle sets, kept when above the
   threshold (on by default: without it, transitive grouping has merged most of a large corpus
   into a handful of clusters in public use).
6. `components`: connected components of the verified edges (scipy, C).
7. a survivor per cluster: a verified trace first, then a preferred teacher, then the shortest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.filters.text_norm import normalise_for_match, response_text
from curate.stage import BatchResult, Stage, StageConfig

ALGORITHM = "curate-minhash/1 (rensa RMinHash v{rensa}, word n-gram shingles, star LSH edges, exact Jaccard)"
_SUB_BATCH = 2048


def text_expr(field: str) -> pl.Expr:
    if field == "prompt":
        return pl.col("prompt")
    if field == "answer":
        return pl.col("answer").fill_null("")
    return response_text(pl.col("reasoning"), pl.col("answer"))


def shingle_hashes(texts: pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat u64 shingle hashes and row offsets (len(texts)+1). Texts shorter than n words give
    one shingle of the whole text, so no row is empty."""
    words = pl.DataFrame({"t": texts}).select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
        normalise_for_match(pl.col("t")).str.split(" ").alias("w"),
    ).explode("w")
    grams = words.with_columns(
        pl.concat_str([pl.col("w").shift(-i).over("row") for i in range(ngram)], separator=" ").alias("g")
    )
    n_words = words.group_by("row").len(name="n")
    grams = grams.join(n_words, on="row").filter(
        pl.col("g").is_not_null() | ((pl.col("n") < ngram) & (pl.int_range(pl.len()).over("row") == 0))
    ).with_columns(pl.coalesce("g", pl.col("w").fill_null("")).hash(seed=11).alias("h"))
    grams = grams.select("row", "h").unique(maintain_order=True).sort("row", maintain_order=True)
    counts = grams.group_by("row").len().sort("row")
    per_row = np.zeros(len(texts), dtype=np.uint64)
    per_row[counts["row"].to_numpy()] = counts["len"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.uint64)
    return grams["h"].to_numpy().astype(np.uint64), offsets


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    import rensa

    if len(offsets) <= 1:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(len(offsets) - 1, num_perm)


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight * P(false positive) + (1 - fp_weight) * P(false negative)."""
    # the two error areas integrated on their own grids, as datasketch does with quad
    lo, hi = np.linspace(0, threshold, 2001), np.linspace(threshold, 1, 2001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo**r) ** b, lo)
            fn = np.trapezoid((1 - hi**r) ** b, hi)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """u64 key per (row, band): a polynomial hash of the band's r signature values."""
    n = sigs.shape[0]
    view = sigs[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = keys * np.uint64(1_000_003) + view[:, :, j] + np.uint64(j + 1)
    return keys


def candidate_edges(keys: np.ndarray) -> pl.DataFrame:
    """(src, dst) with src < dst: each row linked to the first row of every bucket it shares."""
    n, bands = keys.shape
    frame = pl.DataFrame({
        "row": np.repeat(np.arange(n, dtype=np.int64), bands),
        "band": np.tile(np.arange(bands, dtype=np.int32), n),
        "key": keys.reshape(-1),
    })
    return (
        frame.with_columns(pl.col("row").min().over("band", "key").alias("src"))
        .filter(pl.col("src") != pl.col("row"))
        .select(pl.col("src"), pl.col("row").alias("dst"))
        .unique()
    )


def jaccard(edges: pl.DataFrame, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Exact Jaccard of each edge's shingle sets (polars list set operations)."""
    rows = np.unique(np.concatenate([edges["src"].to_numpy(), edges["dst"].to_numpy()])) if edges.height else []
    sets = pl.DataFrame({
        "row": rows,
        "s": [hashes[offsets[r]: offsets[r + 1]] for r in rows],
    }, schema={"row": pl.Int64, "s": pl.List(pl.UInt64)})
    joined = edges.join(sets.rename({"row": "src", "s": "a"}), on="src").join(
        sets.rename({"row": "dst", "s": "b"}), on="dst")
    out = joined.select(
        "src", "dst",
        (pl.col("a").list.set_intersection("b").list.len() / pl.col("a").list.set_union("b").list.len()).alias("j"),
    )
    return edges.join(out, on=["src", "dst"], how="left", maintain_order="left")["j"].fill_null(0).to_numpy()


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


class MinHashConfig(StageConfig):
    threshold: float = Field(0.8, description="Jaccard similarity at and above which traces are near-duplicates.")
    num_perm: int = Field(128, description="MinHash permutations.")
    ngram: int = Field(5, description="Words per shingle.")
    field: str = Field("response", description="Text compared: response (reasoning + answer), answer or prompt.")
    seed: int = 42
    verify_jaccard: bool = Field(True, description="Check candidate pairs' exact Jaccard before linking them.")
    prefer_teachers: list[str] = Field([], description="Survivor preference order among teachers.")

    def model_post_init(self, _ctx) -> None:
        if self.field not in ("response", "answer", "prompt"):
            raise ValueError("field must be response, answer or prompt")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")


class MinHashDedupStage(Stage[MinHashConfig]):
    name = "dedup_minhash"
    version = "1"
    config_model = MinHashConfig
    description = "Near-duplicate traces with MinHash LSH (rensa), exact-Jaccard-checked, one survivor per cluster."
    example = "curate dedup minhash runs/demo --threshold 0.8 --field response"
    cli = ("dedup", "minhash")
    requires = ("trace_id",)
    fit_columns = ("trace_id", "teacher", "prompt", "reasoning", "answer")
    fit_optional_columns = ("math__verdict", "code__verdict")
    score_namespace = "minhash"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("cluster_id"), pa.string()), pa.field(self.col("cluster_size"), pa.int64()),
                pa.field(self.col("is_survivor"), pa.bool_())]

    def summarize(self, counts) -> dict:
        import rensa

        bands, rows = lsh_params(self.config.threshold, self.config.num_perm)
        return {"algorithm": ALGORITHM.format(rensa=getattr(rensa.RMinHash, "ALGORITHM_VERSION", "?")),
                "bands": bands, "rows": rows}

    def fit(self, batches: Iterable[pa.RecordBatch]) -> pa.Table:
        cfg = self.config
        bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
        meta, sigs, all_hashes, all_offsets = [], [], [], []
        flat_base = 0
        for batch in batches:
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            for lo in range(0, frame.height, _SUB_BATCH):
                part = frame.slice(lo, _SUB_BATCH)
                texts = part.select(text_expr(cfg.field)).to_series()
                hashes, offsets = shingle_hashes(texts, cfg.ngram)
                sigs.append(signatures(hashes, offsets, cfg.num_perm, cfg.seed))
                if cfg.verify_jaccard:  # keep shingle sets (u64) for the exact check of candidates
                    all_hashes.append(hashes)
                    all_offsets.append(offsets[:-1].astype(np.int64) + flat_base)
                    flat_base += len(hashes)
                verified = pl.lit(False)
                if "math__verdict" in part.columns:
                    verified = verified | (pl.col("math__verdict") == "correct").fill_null(False)
                if "code__verdict" in part.columns:
                    verified = verified | (pl.col("code__verdict") == "pass").fill_null(False)
                meta.append(part.select("trace_id", "teacher", verified.alias("_verified"),
                                        texts.str.len_chars().alias("_len")))
        if not meta:
            return pl.DataFrame(schema={"trace_id": pl.Utf8}).to_arrow()
        meta_frame = pl.concat(meta)
        n = meta_frame.height
        sig = np.concatenate(sigs)
        edges = candidate_edges(band_keys(sig, bands, rows))
        candidates = edges.height
        if cfg.verify_jaccard and edges.height:
            flat = np.concatenate(all_hashes)
            row_offsets = np.concatenate([*all_offsets, [len(flat)]]).astype(np.int64)
            edges = edges.filter(jaccard(edges, flat, row_offsets) >= cfg.threshold)
        labels = components(n, edges["src"].to_numpy(), edges["dst"].to_numpy())
        teacher_rank = {t: i for i, t in enumerate(cfg.prefer_teachers)}
        ranked = meta_frame.with_columns(
            pl.Series("_cluster", labels),
            pl.col("teacher").replace_strict(teacher_rank, default=len(teacher_rank)).alias("_teacher_rank"),
        ).with_columns(
            pl.col("trace_id").sort_by(["_verified", "_teacher_rank", "_len", "trace_id"],
                                       descending=[True, False, False, False]).first().over("_cluster")
            .alias(self.col("cluster_id")),
            pl.len().over("_cluster").cast(pl.Int64).alias(self.col("cluster_size")),
        )
        self._fit_counts = {"candidate_pairs": candidates, "verified_pairs": edges.height}
        return ranked.select(
            "trace_id", self.col("cluster_id"), self.col("cluster_size"),
            (pl.col("trace_id") == pl.col(self.col("cluster_id"))).alias(self.col("is_survivor")),
        ).to_arrow()

    def process(self, batch: pa.Table) -> BatchResult:
        state = pl.from_arrow(self.state)
        out = pl.from_arrow(batch).join(state, on="trace_id", how="left", maintain_order="left")
        counts = Counter(near_duplicates_dropped_by_policy=int((~out[self.col("is_survivor")]).sum()),
                         in_clusters=int((out[self.col("cluster_size")] > 1).sum()))
        return BatchResult(out.to_arrow(), counts=counts)
