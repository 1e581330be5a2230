"""`curate dedup minhash`: near-duplicate traces, the whole algorithm as a few array functions.

1. `shingle_hashes` (filters/shingles.py): word n-grams of lower-cased text as u64 hashes, from
   the Arrow UTF-8 buffer with numpy (byte tables, one prefix sum); no Python loop per row.
2. `signatures`: MinHash signatures of a batch in one call (rensa, Rust).
3. `lsh_params`: bands b and rows r from the threshold, minimising the weighted false positive and
   false negative areas, as datasketch does.
4. `band_keys` + `candidate_edges`: rows sharing a band bucket are linked to the next `window`
   rows of the bucket in row order (window 1 = a chain): a bucket of k rows gives at most
   k * window edges, never k^2/2 pairs.
5. `edge_jaccard`: the exact Jaccard of each candidate pair's shingle sets; edges below the
   threshold are dropped (on by default: transitive grouping of unchecked LSH candidates has merged
   most of a large corpus into a handful of clusters in public use).
6. `components`: connected components of the kept edges (scipy, C).
7. `survivors`: one per cluster: a verified trace first, then a preferred teacher, then the
   shortest, then the smallest trace_id (deterministic).

`MinHashDedupStage.fit` keeps only the b band keys per row (b * 8 bytes) in memory, so memory is
bounded by the candidates, not by the corpus text. On a large input (several files, >= 200k rows)
pass 1 runs one worker process per core, a file at a time, and each worker spills its file's
shingle hashes to a scratch file; the exact check then gathers only the candidates' sets from
those files. Otherwise pass 1 runs on threads here and pass 2 re-reads and re-shingles only the
rows in a candidate pair.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field
from tqdm import tqdm

from curate.filters.dedup_state import bounded_map, join_sorted, sorted_state
from curate.filters.shingles import _MULT, shingle_hashes
from curate.filters.shingles import mix as _mix
from curate.filters.text_norm import response_text
from curate.filters.verdicts import verified_expr
from curate.stage import BatchResult, Stage, StageConfig

# Bump when shingling, hashing or banding changes: signatures of two versions are not comparable.
ALGORITHM_VERSION = "curate-minhash/4"
FIELDS = ("response", "answer", "prompt", "reasoning")
_SUB_BATCH = 4096
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)
_PACK_ROW_BITS = 24
_PROCESS_MIN_ROWS = 200_000


@dataclass
class _FileWorkers:
    """One rescan per input file, the scratch file each one's shingle hashes spill to, the pool."""

    pieces: list
    spills: list[str]
    pool: ProcessPoolExecutor


def _signature_file(stage: MinHashDedupStage, batches: Iterable[pa.RecordBatch], spill: str) -> dict | None:
    """Pass 1 over one file in a worker process (one thread: the pool has a process per core)."""
    return stage._signature_pass(batches, 1, spill, progress=False)


def _spilled_sets(spill: str, wanted: np.ndarray, base: int) -> pl.DataFrame:
    """The (row, s) sets of the `wanted` global rows of one file from its spilled shingle hashes."""
    offsets = np.load(f"{spill}.offsets.npy")
    hashes = np.memmap(spill, dtype=np.uint64, mode="r") if offsets[-1] else np.zeros(0, np.uint64)
    local = wanted - base
    starts, lengths = offsets[local], offsets[local + 1] - offsets[local]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.arange(new_offsets[-1], dtype=np.int64) + np.repeat(starts - new_offsets[:-1], lengths)
    return _sets_frame(np.asarray(hashes[gather]), new_offsets, wanted)


def algorithm_id(num_perm: int, seed: int, ngram: int) -> str:
    """What a signature depends on; stored with cached signatures and in the manifest."""
    import rensa

    return (f"{ALGORITHM_VERSION};rensa={_rensa_version()};rensa_alg={rensa.RMinHash.ALGORITHM_VERSION};"
            f"polars={pl.__version__};num_perm={num_perm};seed={seed};ngram={ngram};tokens=bytes-split-punct;word-hash=fnv1a64-unseeded")


def _rensa_version() -> str:
    from importlib.metadata import version

    return version("rensa")


def text_expr(field: str) -> pl.Expr:
    """The compared text: response = reasoning + answer (default), or one column."""
    if field == "response":
        return response_text(pl.col("reasoning"), pl.col("answer"))
    return pl.col(field).fill_null("")


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """uint32 [rows, num_perm] MinHash signatures (rensa RMinHash over pre-hashed shingles)."""
    import rensa

    rows = len(offsets) - 1
    if rows <= 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        hashes.astype(np.uint64, copy=False), offsets.astype(np.uint64), num_perm, seed)
    # rensa exports only Python lists; fromiter over the flattened rows is the cheapest way out
    flat = np.fromiter(chain.from_iterable(matrix.to_rows()), dtype=np.uint32, count=rows * num_perm)
    return flat.reshape(rows, num_perm)


@lru_cache(maxsize=64)  # ~40 ms of numpy per call; every sub-batch asks
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight * P(false positive) + (1 - fp_weight) * P(false negative),
    each integrated over its side of the threshold (datasketch's `_optimal_param`)."""
    lo, hi = np.linspace(0, threshold, 1001), np.linspace(threshold, 1, 1001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1)[:, None]
        fp = np.trapezoid(1 - (1 - lo[None, :] ** r) ** b, lo, axis=1)
        fn = np.trapezoid(1 - (1 - (1 - hi[None, :] ** r) ** b), hi, axis=1)
        err = fp_weight * fp + (1 - fp_weight) * fn
        i = int(np.argmin(err))
        if err[i] < best_err - 1e-12:
            best, best_err = (b, i + 1), float(err[i])
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """u64 bucket key per (row, band) from the band's r signature values."""
    n = sigs.shape[0]
    view = sigs[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    keys = np.full((n, bands), np.uint64(rows), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = _mix(keys * _MULT + view[:, :, j])
    return keys


def candidate_edges(keys: np.ndarray, rows: np.ndarray | None = None, *, window: int = 1) -> np.ndarray:
    """Unique (src, dst) int64 pairs, src < dst, as an [E, 2] array: within every (band, key)
    bucket, each row is linked to the next `window` rows in row order. `rows` gives each key
    row's global index (default 0..n-1); rows whose keys are all masked out are simply absent."""
    n, bands = keys.shape
    ids = np.arange(n, dtype=np.int64) if rows is None else rows.astype(np.int64)
    # one sort key per (band, key): the band is folded in by a bijective mix, so a bucket is a run
    # of equal values, in row order within the run
    with np.errstate(over="ignore"):
        folded = _mix(keys + np.arange(bands, dtype=np.uint64)[None, :] * _BAND_SALT).reshape(-1)
    row_bits = max(int(ids.max()).bit_length(), 1) if n else 1
    if row_bits <= _PACK_ROW_BITS:
        # per band, the key's top bits and the row in one u64: numpy's SIMD sort of plain values is
        # ~8x faster than an arg-sort, and b sorts of n values (on a thread each, numpy releases the
        # GIL) beat one of b * n; >= 40 key bits leave a few chance bucket collisions per band at
        # 16M rows, which are only extra candidate pairs (the exact Jaccard check drops them)
        from concurrent.futures import ThreadPoolExecutor

        low = np.uint64((1 << row_bits) - 1)
        row_ids = ids.astype(np.uint64)

        def band_pairs(band: int) -> np.ndarray:
            with np.errstate(over="ignore"):  # mixed so the kept top bits spread any key set
                packed = (_mix(keys[:, band] + np.uint64(band) * _BAND_SALT) & ~low) | row_ids
            packed.sort()
            key, row = packed >> np.uint64(row_bits), (packed & low).astype(np.int64)
            return np.concatenate([_bucket_pairs(key, row, d) for d in range(1, window + 1)])

        with ThreadPoolExecutor(min(bands, os.cpu_count() or 1)) as pool:
            pairs = list(pool.map(band_pairs, range(bands)))
    else:
        # one sort key per (band, key): the band is folded in by a bijective mix, so a bucket is a
        # run of equal values, in row order within the run
        with np.errstate(over="ignore"):
            folded = _mix(keys + np.arange(bands, dtype=np.uint64)[None, :] * _BAND_SALT).reshape(-1)
        frame = pl.DataFrame({"key": folded, "row": np.repeat(ids, bands)}).sort("key", "row")
        key, row = frame["key"].to_numpy(), frame["row"].to_numpy()
        del frame, folded
        pairs = [_bucket_pairs(key, row, d) for d in range(1, window + 1)]
    packed = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, np.int64)
    return np.stack([packed >> np.int64(32), packed & np.int64(0xFFFFFFFF)], axis=1)


def _bucket_pairs(key: np.ndarray, row: np.ndarray, d: int) -> np.ndarray:
    """Packed (src << 32 | dst) of rows d apart within runs of equal `key` (sorted by key, row)."""
    same = (key[d:] == key[:-d]) & (row[d:] != row[:-d])  # a chance fold collision can pair a row with itself
    return (row[:-d][same] << np.int64(32)) | row[d:][same]


def _sets_frame(hashes: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> pl.DataFrame:
    """(row, s): each row's distinct shingle hashes as a list column."""
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(hashes, pa.uint64()))
    return pl.DataFrame({"row": rows.astype(np.int64), "s": pl.Series(lists).list.unique()})


def edge_jaccard(edges: np.ndarray, sets: pl.DataFrame, *, max_elements: int = 20_000_000) -> np.ndarray:
    """Exact Jaccard of each (src, dst) edge's shingle sets; edges are processed in chunks whose
    lists hold at most about `max_elements` hashes, so memory stays bounded."""
    if len(edges) == 0:
        return np.zeros(0, dtype=np.float64)
    size = sets.select("row", pl.col("s").list.len().alias("n"))
    frame = pl.DataFrame({"src": edges[:, 0], "dst": edges[:, 1]})
    cost = (frame.join(size.rename({"row": "src", "n": "na"}), on="src", how="left", maintain_order="left")
            .join(size.rename({"row": "dst", "n": "nb"}), on="dst", how="left", maintain_order="left")
            .select(pl.col("na").fill_null(0) + pl.col("nb").fill_null(0)).to_series().to_numpy())
    chunk_of = (np.cumsum(cost) // max_elements).astype(np.int64)
    cuts = [0, *(np.flatnonzero(np.diff(chunk_of)) + 1).tolist(), len(edges)]
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        part = (frame.slice(lo, hi - lo)
                .join(sets.rename({"row": "src", "s": "a"}), on="src", how="left", maintain_order="left")
                .join(sets.rename({"row": "dst", "s": "b"}), on="dst", how="left", maintain_order="left"))
        inter = part["a"].list.set_intersection(part["b"]).list.len()
        union = part["a"].list.len() + part["b"].list.len() - inter
        out.append((inter / union).fill_nan(0.0).fill_null(0.0).to_numpy())
    return np.concatenate(out)


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label per node 0..n-1 (scipy's C implementation)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def survivors(meta: pl.DataFrame, labels: np.ndarray, key: str, prefer_teachers: list[str]) -> pl.DataFrame:
    """Adds `_cluster`, `_survivor` (the kept member's id) and `_size` to `meta` (columns key,
    teacher, _verified, _len): verified first, then preferred teacher, then shortest, then id."""
    teacher_rank = {t: i for i, t in enumerate(prefer_teachers)}
    return meta.with_columns(
        pl.Series("_cluster", labels),
        pl.col("teacher").replace_strict(teacher_rank, default=len(teacher_rank), return_dtype=pl.Int64)
        .alias("_teacher_rank"),
    ).with_columns(
        pl.col(key).sort_by(["_verified", "_teacher_rank", "_len", key], descending=[True, False, False, False])
        .first().over("_cluster").alias("_survivor"),
        pl.len().over("_cluster").cast(pl.Int64).alias("_size"),
    )


class MinHashConfig(StageConfig):
    threshold: float = Field(0.7, description="Jaccard similarity of word n-gram sets at and above which two "
                                              "texts are near-duplicates.")
    num_perm: int = Field(128, description="MinHash permutations (signature length).")
    ngram: int = Field(5, description="Words per shingle.")
    field: str = Field("response", description="Text compared: response (reasoning + answer), reasoning, answer "
                                               "or prompt.")
    seed: int = Field(42, description="MinHash seed.")
    lsh_fp_weight: float = Field(0.1, description="Weight of false positives against misses when deriving bands "
                                                  "and rows (0.5 = datasketch). Low, because the exact Jaccard "
                                                  "check removes false positives.")
    bands: int | None = Field(None, description="LSH bands; default derived from threshold and num_perm.")
    rows: int | None = Field(None, description="LSH rows per band; default derived from threshold and num_perm.")
    nfkc: bool = Field(False, description="Unicode NFKC before tokenising (slower; folds ligatures and "
                                          "full-width forms).")
    threads: int | None = Field(None, description="Threads for signatures (default: all cores).")
    processes: int | None = Field(None, description="Worker processes for the signature pass, one input file "
                                                    "each at a time (default: all cores when the input has "
                                                    "several files and at least 200,000 rows; 1 = threads "
                                                    "in this process).")
    scratch_dir: str | None = Field(None, description="Where worker processes spill shingle hashes for the "
                                                      "exact Jaccard check (default: the system temp dir).")
    window: int = Field(2, description="Candidate edges per row per bucket (1 = chain).")
    verify_jaccard: bool = Field(True, description="Check candidate pairs' exact Jaccard before linking them.")
    min_words: int = Field(1, description="Texts with fewer words are never clustered (empty/errored traces).")
    prefer_teachers: list[str] = Field([], description="Survivor preference among teachers, best first (after "
                                                       "verified traces).")
    signatures_out: str | None = Field(None, description="Write trace_id + signature Parquet here (with the "
                                                         "algorithm version in its metadata).")

    def model_post_init(self, _ctx) -> None:
        if self.field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {self.field!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not 0 < self.lsh_fp_weight < 1:
            raise ValueError("lsh_fp_weight must be in (0, 1)")
        if self.window < 1:
            raise ValueError("window must be at least 1")


class MinHashDedupStage(Stage[MinHashConfig]):
    name = "dedup_minhash"
    version = "2"
    config_model = MinHashConfig
    description = ("Near-duplicate traces with MinHash LSH (rensa), candidate pairs checked by exact Jaccard, "
                   "one survivor per cluster (verified, then preferred teacher, then shortest).")
    example = "curate dedup minhash runs/demo/03-verify_math --threshold 0.8 --field response"
    cli = ("dedup", "minhash")
    requires = ("trace_id",)

    @property
    def fit_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        # only the compared text: a prompt column is read only when prompts are compared
        text = ("reasoning", "answer") if self.config.field == "response" else (self.config.field,)
        return ("trace_id", "teacher", *text)
    fit_optional_columns = ("math__verdict", "code__verdict")
    score_namespace = "minhash"

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("cluster_id"), pa.string()), pa.field(self.col("cluster_size"), pa.int64()),
                pa.field(self.col("is_survivor"), pa.bool_()), pa.field(self.col("max_jaccard"), pa.float64())]

    def lsh(self) -> tuple[int, int]:
        cfg = self.config
        if cfg.bands is not None:
            return cfg.bands, cfg.rows
        return lsh_params(cfg.threshold, cfg.num_perm, cfg.lsh_fp_weight)

    def summarize(self, counts) -> dict:
        bands, rows = self.lsh()
        cfg = self.config
        return {"algorithm": algorithm_id(cfg.num_perm, cfg.seed, cfg.ngram), "bands": bands, "rows": rows,
                **getattr(self, "_fit_stats", {})}

    # -- fit -------------------------------------------------------------------------------
    def _sub_batches(self, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, pl.DataFrame]]:
        base = 0
        # a rescan reads straight into polars: converting Arrow strings costs more than reading them
        frames = batches.frames() if hasattr(batches, "frames") else (
            pl.from_arrow(pa.Table.from_batches([batch])) for batch in batches)
        for frame in frames:
            for lo in range(0, frame.height, _SUB_BATCH):
                part = frame.slice(lo, _SUB_BATCH)
                yield base, part
                base += part.height

    def _signature_part(self, item: tuple[int, pl.DataFrame]) -> dict:
        """Pass 1 on one sub-batch: band keys of its usable rows, its survivor-policy columns."""
        base, part = item
        cfg = self.config
        bands, rows = self.lsh()
        texts = part.select(text_expr(cfg.field)).to_series()
        hashes, offsets, n_words = shingle_hashes(texts, cfg.ngram, nfkc=cfg.nfkc)
        sigs = signatures(hashes, offsets, cfg.num_perm, cfg.seed)
        usable = n_words >= max(cfg.min_words, 1)
        return {
            "shingles": (hashes, offsets),
            "keys": band_keys(sigs[usable], bands, rows),
            "rows": np.flatnonzero(usable) + base,
            "sigs": pl.DataFrame({"trace_id": part["trace_id"], "signature": sigs}) if cfg.signatures_out else None,
            "meta": part.select("trace_id", pl.col("teacher").cast(pl.Utf8), verified_expr(part.columns).alias("_verified"),
                                texts.str.len_chars().alias("_len")),
        }

    def _signature_pass(self, batches: Iterable[pa.RecordBatch], threads: int, spill: str | None = None,
                        progress: bool = True) -> dict | None:
        """Pass 1 over `batches`: band keys, their row indices (from 0), survivor columns. With
        `spill`, every row's shingle hashes also go to `spill` (flat u64) and their row offsets
        to `spill`.offsets.npy, so pass 2 gathers the candidates' sets instead of re-reading and
        re-tokenising the texts."""
        keys, key_rows, meta, sig_parts, ends = [], [], [], [], []
        with ExitStack() as stack:
            out = stack.enter_context(open(spill, "wb")) if spill else None
            total = 0
            parts = bounded_map(self._signature_part, self._sub_batches(batches), threads)
            for done in tqdm(parts, desc="minhash signatures", unit="batch", disable=None if progress else True,
                             leave=False):
                keys.append(done["keys"])
                key_rows.append(done["rows"])
                meta.append(done["meta"])
                if done["sigs"] is not None:
                    sig_parts.append(done["sigs"])
                if out is not None:
                    hashes, offsets = done["shingles"]
                    hashes.tofile(out)
                    ends.append(offsets[1:] + total)
                    total += len(hashes)
        if spill:
            np.save(f"{spill}.offsets.npy", np.concatenate([[0], *ends]).astype(np.int64))
        if not meta:
            return None
        return {"keys": np.concatenate(keys), "rows": np.concatenate(key_rows), "meta": pl.concat(meta),
                "sigs": pl.concat(sig_parts) if sig_parts else None}

    def _worker_pool(self, batches: Iterable[pa.RecordBatch], stack: ExitStack) -> _FileWorkers | None:
        """File workers when the input is large enough to repay their start-up (about 2 s). rensa's `to_rows` holds the GIL, so
        threads alone leave a core idle for a third of the signature pass. Each worker spills its
        file's shingle hashes to a scratch directory (about 1.8 GB per million traces, removed when
        the fit ends)."""
        cfg = self.config
        pieces = batches.split() if hasattr(batches, "split") else None
        workers = cfg.processes if cfg.processes is not None else os.cpu_count() or 1
        if not pieces or len(pieces) < 2 or workers < 2 or (
                cfg.processes is None and sum(p.rows() for p in pieces) < _PROCESS_MIN_ROWS):
            return None
        from curate.executors import spawn_pool

        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="curate-minhash-", dir=cfg.scratch_dir)))
        return _FileWorkers(pieces, [str(scratch / f"shingles-{i:05d}.u64") for i in range(len(pieces))],
                            stack.enter_context(spawn_pool(min(workers, len(pieces)))))

    def _signature_parts(self, batches, workers: _FileWorkers | None) -> Iterator[dict]:
        """Pass 1: file by file in the pool when there is one, else threads here."""
        if workers is not None:
            futures = [workers.pool.submit(_signature_file, self, piece, spill)
                       for piece, spill in zip(workers.pieces, workers.spills, strict=True)]
            for future in tqdm(futures, desc="minhash signatures", unit="file", disable=None, leave=False):
                yield future.result()
            return
        yield self._signature_pass(batches, self.config.threads or os.cpu_count() or 1)

    def fit(self, batches: Iterable[pa.RecordBatch]) -> pa.Table:
        with ExitStack() as stack:
            return self._fit(batches, self._worker_pool(batches, stack))

    def _fit(self, batches, workers: _FileWorkers | None) -> pa.Table:
        cfg = self.config
        started = time.perf_counter()
        meta, keys, key_rows, sig_parts, piece_rows = [], [], [], [], []
        base = 0
        for done in self._signature_parts(batches, workers):
            piece_rows.append(done["meta"].height if done else 0)
            if done is None:
                continue
            keys.append(done["keys"])
            key_rows.append(done["rows"] + base)
            meta.append(done["meta"])
            base += done["meta"].height
            if done["sigs"] is not None:
                sig_parts.append(done["sigs"])
        if not meta:
            return self._empty_state()
        meta_frame = pl.concat(meta)
        n = meta_frame.height
        if sig_parts:
            self._write_signatures(pl.concat(sig_parts).to_arrow())
        signed = time.perf_counter()
        edges = candidate_edges(np.concatenate(keys), np.concatenate(key_rows), window=cfg.window)
        del keys
        stats = {"rows_fit": n, "candidate_pairs": int(len(edges))}
        best = np.full(n, np.nan)
        reread = 0.0
        if cfg.verify_jaccard and len(edges):
            t = time.perf_counter()
            sets = self._candidate_sets(batches, np.unique(edges), workers, piece_rows)
            reread = time.perf_counter() - t
            sim = edge_jaccard(edges, sets)
            del sets
            edges, sim = edges[sim >= cfg.threshold], sim[sim >= cfg.threshold]
            np.fmax.at(best, edges[:, 0], sim)
            np.fmax.at(best, edges[:, 1], sim)
        stats["linked_pairs"] = int(len(edges))
        labels = components(n, edges[:, 0], edges[:, 1])
        ranked = survivors(meta_frame, labels, "trace_id", cfg.prefer_teachers)
        stats["clusters_with_duplicates"] = int(ranked.filter(pl.col("_size") > 1)["_cluster"].n_unique())
        # wall seconds per phase, so a benchmark can say where the time goes
        stats["fit_seconds"] = {"signatures": round(signed - started, 2), "candidate_reread": round(reread, 2),
                                "graph_and_survivors": round(time.perf_counter() - signed - reread, 2)}
        self._fit_stats = stats
        return ranked.select(
            "trace_id",
            pl.col("_survivor").alias(self.col("cluster_id")),
            pl.col("_size").alias(self.col("cluster_size")),
            (pl.col("trace_id") == pl.col("_survivor")).alias(self.col("is_survivor")),
            pl.Series(self.col("max_jaccard"), best).fill_nan(None),
        ).unique("trace_id", keep="first", maintain_order=True).sort("trace_id").to_arrow()

    def _sets_pass(self, batches: Iterable[pa.RecordBatch], wanted: np.ndarray, threads: int) -> pl.DataFrame | None:
        """Distinct shingle hashes of the `wanted` rows (sorted indices from 0) of `batches`."""
        cfg = self.config

        def sets_of(item: tuple[int, pl.DataFrame]) -> pl.DataFrame | None:
            base, part = item
            lo, hi = np.searchsorted(wanted, [base, base + part.height])
            if hi == lo:
                return None
            texts = part[wanted[lo:hi] - base].select(text_expr(cfg.field)).to_series()
            hashes, offsets, _ = shingle_hashes(texts, cfg.ngram, nfkc=cfg.nfkc)
            return _sets_frame(hashes, offsets, wanted[lo:hi])

        parts = [p for p in bounded_map(sets_of, self._sub_batches(batches), threads) if p is not None]
        return pl.concat(parts) if parts else None

    def _candidate_sets(self, batches, wanted: np.ndarray, workers: _FileWorkers | None,
                        piece_rows: list[int]) -> pl.DataFrame:
        """Pass 2: distinct shingle hashes of the rows in some candidate pair (only those)."""
        if workers is None:
            parts = [self._sets_pass(batches, wanted, self.config.threads or os.cpu_count() or 1)]
        else:
            bases = np.concatenate([[0], np.cumsum(piece_rows)]).astype(np.int64)
            cuts = np.searchsorted(wanted, bases)
            parts = [_spilled_sets(spill, wanted[lo:hi], base)
                     for spill, base, lo, hi in zip(workers.spills, bases[:-1], cuts[:-1], cuts[1:], strict=True)
                     if hi > lo]
        parts = [p for p in parts if p is not None]
        return pl.concat(parts) if parts else pl.DataFrame(schema={"row": pl.Int64, "s": pl.List(pl.UInt64)})

    def _write_signatures(self, table: pa.Table) -> None:
        from curate.io import write_table

        cfg = self.config
        meta = {"algorithm": algorithm_id(cfg.num_perm, cfg.seed, cfg.ngram),
                "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)}
        write_table(Path(cfg.signatures_out), table, metadata=meta)

    def _empty_state(self) -> pa.Table:
        return pa.schema([pa.field("trace_id", pa.string()), *self.output_fields()]).empty_table()

    def load_state(self, state: pa.Table | None) -> None:
        self.state = state
        self._sorted = sorted_state(state)

    def process(self, batch: pa.Table) -> BatchResult:
        table, out = join_sorted(batch, self._sorted)
        counts = Counter(not_survivor=int((~out[self.col("is_survivor")].fill_null(True)).sum()),
                         in_duplicate_clusters=int((out[self.col("cluster_size")] > 1).sum()))
        return BatchResult(table, counts=counts)
