"""The `topk-v1` teacher logit cache: schema, metadata, compact codec, zero-copy reads.

One Parquet row per (trace, teacher). A row holds the token ids of prompt + completion and, for
every completion token, the teacher's top-k next-token distribution that predicted it:

* ``input_ids`` list<uint32>: the whole sequence (chat template applied).
* ``completion_start`` int32: index of the first completion token; positions
  ``completion_start .. len(input_ids) - 1`` are cached, ``n = len(input_ids) - completion_start``.
* ``topk_ids`` list<int32> and ``topk_logprobs`` list<float16>, flat, ``n * k`` values, row-major
  ``[position][rank]``, rank 0 the most likely: raw log-probs at temperature 1 (not renormalised
  over the k, so ``1 - sum(exp(topk_logprobs))`` is the tail mass).
* ``token_logprob`` list<float16>, ``n`` values: log-prob of the realised token, exact even where
  it is outside the top-k.

File metadata (``topk.*`` keys) names the teacher, its revision, the tokenizer hash, k, vocab size,
codec and format version. The **compact** codec replaces the two top-k columns by
``topk_id_gaps`` list<uint32> (ids sorted ascending per position, each stored as the gap to the
previous id, the first as itself), ``top1_logprob`` list<float16> (one per position) and
``topk_steps`` list<uint8> (``round((top1 - logprob) / step)``, clamped at 255): plain integer
columns any Arrow reader understands, decoded back by `decode_compact`. See docs/topk-v1.md.

Nothing here imports torch: the format is readable from polars / DuckDB / Arrow alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT_VERSION = "topk-v1"
DEFAULT_K = 32
# 1/16 nat per uint8 step: rounding error <= 1/32 nat (probability within +-3.2%), and 255 steps
# reach 15.9 nats below the top-1 (a probability ratio of 1.2e-7) before clamping.
DEFAULT_STEP = 1.0 / 16.0
MAX_STEPS = 255
META_PREFIX = "topk."
KEY_COLUMNS = ("trace_id", "problem_id", "teacher")
PLAIN_COLUMNS = ("topk_ids", "topk_logprobs")
COMPACT_COLUMNS = ("topk_id_gaps", "top1_logprob", "topk_steps")

# Parquet writer settings tuned for the cache: BYTE_STREAM_SPLIT groups the bytes of each value
# (the high bytes of token ids, the sign/exponent bytes of log-probs) so zstd sees long runs;
# dictionaries stay on for the repeated key strings only.
_BSS_COLUMNS = ("input_ids", "topk_ids", "topk_logprobs", "token_logprob", "topk_id_gaps", "top1_logprob")


class CacheFormatError(ValueError):
    pass


class TokenizerMismatchError(CacheFormatError):
    pass


@dataclass(frozen=True)
class CacheMeta:
    teacher: str
    revision: str
    tokenizer_hash: str
    k: int
    vocab_size: int
    codec: str = "plain"  # plain | compact
    step: float = DEFAULT_STEP  # compact codec: nats per uint8 step
    format: str = FORMAT_VERSION
    temperature: float = 1.0  # the cached log-probs are always raw (T=1); recorded for readers

    def __post_init__(self) -> None:
        if self.codec not in ("plain", "compact"):
            raise CacheFormatError(f"unknown topk codec {self.codec!r} (plain or compact)")
        if not 1 <= self.k <= self.vocab_size:
            raise CacheFormatError(f"k={self.k} must lie in [1, vocab_size={self.vocab_size}]")

    def to_metadata(self) -> dict[bytes, bytes]:
        return {f"{META_PREFIX}{key}".encode(): str(value).encode() for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | None, *, where: str = "cache") -> CacheMeta:
        raw = {k.decode(): v.decode() for k, v in (metadata or {}).items() if k.decode().startswith(META_PREFIX)}
        if not raw:
            raise CacheFormatError(f"{where}: no topk-v1 metadata (is this a logit cache?)")
        values = {k[len(META_PREFIX):]: v for k, v in raw.items()}
        if values.get("format") != FORMAT_VERSION:
            raise CacheFormatError(f"{where}: format {values.get('format')!r}, this reader knows {FORMAT_VERSION}")
        try:
            return cls(
                teacher=values["teacher"], revision=values["revision"], tokenizer_hash=values["tokenizer_hash"],
                k=int(values["k"]), vocab_size=int(values["vocab_size"]), codec=values.get("codec", "plain"),
                step=float(values.get("step", DEFAULT_STEP)), format=values["format"],
                temperature=float(values.get("temperature", 1.0)),
            )
        except KeyError as exc:
            raise CacheFormatError(f"{where}: topk metadata lacks {exc.args[0]!r}") from None

    def check_tokenizer(self, tokenizer_hash: str, *, what: str = "this tokenizer") -> None:
        if tokenizer_hash != self.tokenizer_hash:
            raise TokenizerMismatchError(
                f"logit cache of teacher {self.teacher!r} was made with tokenizer {self.tokenizer_hash[:16]}, "
                f"but {what} hashes to {tokenizer_hash[:16]}: token ids would mean different tokens. "
                "Use a student that shares the teacher's tokenizer, or rebuild the cache."
            )


# -- schemas ----------------------------------------------------------------------------------
def _key_fields() -> list[pa.Field]:
    return [pa.field("trace_id", pa.string(), nullable=False), pa.field("problem_id", pa.string()),
            pa.field("teacher", pa.string(), nullable=False)]


def cache_fields(meta: CacheMeta) -> list[pa.Field]:
    """Every column of a cache row. The metadata also rides on the `input_ids` field, so it
    survives writers that keep field metadata but not schema metadata."""
    ids = pa.field("input_ids", pa.list_(pa.uint32()), nullable=False, metadata=meta.to_metadata())
    common = [ids, pa.field("completion_start", pa.int32(), nullable=False)]
    if meta.codec == "plain":
        body = [pa.field("topk_ids", pa.list_(pa.int32())), pa.field("topk_logprobs", pa.list_(pa.float16()))]
    else:
        body = [pa.field("topk_id_gaps", pa.list_(pa.uint32())), pa.field("top1_logprob", pa.list_(pa.float16())),
                pa.field("topk_steps", pa.list_(pa.uint8()))]
    return [*_key_fields(), *common, *body, pa.field("token_logprob", pa.list_(pa.float16()))]


def cache_schema(meta: CacheMeta) -> pa.Schema:
    return pa.schema(cache_fields(meta), metadata=meta.to_metadata())


def meta_of_schema(schema: pa.Schema, *, where: str = "cache") -> CacheMeta:
    if schema.metadata and any(k.startswith(META_PREFIX.encode()) for k in schema.metadata):
        return CacheMeta.from_metadata(schema.metadata, where=where)
    if "input_ids" in schema.names:
        return CacheMeta.from_metadata(schema.field("input_ids").metadata, where=where)
    raise CacheFormatError(f"{where}: not a topk-v1 cache (no input_ids column, no topk metadata)")


# -- building rows --------------------------------------------------------------------------
def _list(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def build_plain_table(
    meta: CacheMeta,
    *,
    trace_id: list[str] | pa.Array,
    problem_id: list[str | None] | pa.Array,
    input_ids: list[np.ndarray],
    completion_start: np.ndarray,
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    token_logprob: np.ndarray,
) -> pa.Table:
    """Rows from flat arrays: ``topk_*`` are ``[sum(n), k]``, ``token_logprob`` is ``[sum(n)]`` in
    row order, where row i has ``n_i = len(input_ids[i]) - completion_start[i]`` positions."""
    lengths = np.array([len(x) for x in input_ids], dtype=np.int64)
    completion_start = np.asarray(completion_start, dtype=np.int32)
    n = lengths - completion_start
    if (n < 0).any():
        raise CacheFormatError("completion_start beyond the end of input_ids")
    if topk_ids.shape != (int(n.sum()), meta.k) or topk_logprobs.shape != topk_ids.shape:
        raise CacheFormatError(f"top-k arrays {topk_ids.shape} do not match {int(n.sum())} positions x k={meta.k}")
    id_offsets = np.concatenate([[0], np.cumsum(lengths)])
    pos_offsets = np.concatenate([[0], np.cumsum(n)])
    flat_ids = np.concatenate(input_ids).astype(np.uint32) if input_ids else np.zeros(0, np.uint32)
    columns = {
        "trace_id": pa.array(trace_id, pa.string()),
        "problem_id": pa.array(problem_id, pa.string()),
        "teacher": pa.array([meta.teacher] * len(input_ids), pa.string()),
        "input_ids": _list(flat_ids, id_offsets, pa.uint32()),
        "completion_start": pa.array(completion_start, pa.int32()),
        "topk_ids": _list(topk_ids.astype(np.int32).ravel(), pos_offsets * meta.k, pa.int32()),
        "topk_logprobs": _list(topk_logprobs.astype(np.float16).ravel(), pos_offsets * meta.k, pa.float16()),
        "token_logprob": _list(np.asarray(token_logprob).astype(np.float16), pos_offsets, pa.float16()),
    }
    return pa.table(columns, schema=cache_schema(meta))


# -- compact codec ----------------------------------------------------------------------------
def encode_compact(table: pa.Table, meta: CacheMeta, *, step: float = DEFAULT_STEP) -> tuple[pa.Table, CacheMeta]:
    """Plain -> compact. Ids are sorted per position and stored as gaps; log-probs become uint8
    steps of ``step`` nats below the position's top-1 (stored as float16). Error bound: every
    decoded log-prob is within ``step / 2`` of the top-1's float16 value minus the true gap, i.e.
    ``|decoded - fp16(logprob)| <= step/2 + fp16 rounding of the top-1``, except values more than
    ``255 * step`` nats below the top-1, which decode to exactly that floor (an upper bound)."""
    if meta.codec != "plain":
        raise CacheFormatError("encode_compact expects a plain cache table")
    k = meta.k
    ids, logprobs = _flat_topk(table, k)
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    sorted_lp = np.take_along_axis(logprobs.astype(np.float32), order, axis=1)
    gaps = np.diff(sorted_ids, axis=1, prepend=0).astype(np.uint32)
    top1 = logprobs.astype(np.float32).max(axis=1).astype(np.float16)
    steps = np.clip(np.rint((top1.astype(np.float32)[:, None] - sorted_lp) / step), 0, MAX_STEPS).astype(np.uint8)
    pos_offsets = _position_offsets(table)
    new_meta = CacheMeta(**{**asdict(meta), "codec": "compact", "step": step})
    columns = {name: table.column(name) for name in (*KEY_COLUMNS, "input_ids", "completion_start")}
    columns["topk_id_gaps"] = _list(gaps.ravel(), pos_offsets * k, pa.uint32())
    columns["top1_logprob"] = _list(top1, pos_offsets, pa.float16())
    columns["topk_steps"] = _list(steps.ravel(), pos_offsets * k, pa.uint8())
    columns["token_logprob"] = table.column("token_logprob")
    return pa.table(columns, schema=cache_schema(new_meta)), new_meta


def decode_compact(table: pa.Table, meta: CacheMeta) -> tuple[pa.Table, CacheMeta]:
    """Compact -> plain (ids ascending per position instead of by rank)."""
    if meta.codec != "compact":
        return table, meta
    k = meta.k
    gaps = _values(table, "topk_id_gaps").astype(np.int64).reshape(-1, k)
    ids = np.cumsum(gaps, axis=1).astype(np.int32)
    top1 = _values(table, "top1_logprob").astype(np.float32)
    steps = _values(table, "topk_steps").astype(np.float32).reshape(-1, k)
    logprobs = (top1[:, None] - steps * meta.step).astype(np.float16)
    pos_offsets = _position_offsets(table)
    plain_meta = CacheMeta(**{**asdict(meta), "codec": "plain"})
    columns = {name: table.column(name) for name in (*KEY_COLUMNS, "input_ids", "completion_start")}
    columns["topk_ids"] = _list(ids.ravel(), pos_offsets * k, pa.int32())
    columns["topk_logprobs"] = _list(logprobs.ravel(), pos_offsets * k, pa.float16())
    columns["token_logprob"] = table.column("token_logprob")
    return pa.table(columns, schema=cache_schema(plain_meta)), plain_meta


def _values(table: pa.Table, column: str) -> np.ndarray:
    """The flat values of a list column for exactly these rows (zero-copy for one chunk)."""
    chunks = [c.flatten() for c in table.column(column).chunks]
    if len(chunks) == 1:
        return chunks[0].to_numpy(zero_copy_only=False)
    return np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]) if chunks else np.zeros(0)


def _flat_topk(table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray]:
    return _values(table, "topk_ids").reshape(-1, k), _values(table, "topk_logprobs").reshape(-1, k)


def _position_offsets(table: pa.Table) -> np.ndarray:
    n = (pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
         - table.column("completion_start").to_numpy().astype(np.int64))
    return np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


# -- writing and reading --------------------------------------------------------------------
def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """pyarrow ParquetWriter keyword arguments for a cache file (zstd, byte-stream-split)."""
    bss = [name for name in _BSS_COLUMNS if name in schema.names]
    leaf = {name: f"{name}.list.element" for name in bss}
    return {
        "compression": "zstd",
        "compression_level": 6,
        "use_dictionary": [name for name in ("trace_id", "problem_id", "teacher") if name in schema.names],
        "column_encoding": {leaf[name]: "BYTE_STREAM_SPLIT" for name in bss},
    }


def write_cache(path: str | Path, table: pa.Table, meta: CacheMeta) -> Path:
    """Write one cache file atomically (temp name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = cache_schema(meta)
    table = table.select(schema.names).cast(schema)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, **parquet_options(schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cache_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"logit cache {path} does not exist")
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")) and p.parent.name != "_scratch")
    if not files:
        raise FileNotFoundError(f"no cache Parquet files under {path}")
    return files


def read_meta(path: str | Path) -> CacheMeta:
    """The metadata of a cache file or folder; every file of a folder must agree."""
    metas = {f: meta_of_schema(pq.read_schema(f), where=str(f)) for f in cache_files(path)}
    first_file, first = next(iter(metas.items()))
    for file, meta in metas.items():
        if (meta.tokenizer_hash, meta.k, meta.vocab_size, meta.teacher) != (
            first.tokenizer_hash, first.k, first.vocab_size, first.teacher
        ):
            raise CacheFormatError(f"{file}: cache metadata differs from {first_file} ({meta} vs {first})")
    return first


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what gives token ids their meaning: the fast tokenizer's full JSON (vocab, merges,
    added/special tokens, normaliser) or, for slow tokenizers, the sorted vocabulary. The chat
    template is left out: it changes the text, not what an id means."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # runtime settings, not vocabulary
        spec.pop("padding", None)
        payload = json.dumps(spec, sort_keys=True)
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TopkView:
    """A trainer step's rows as numpy views over the Arrow buffers (no copy for one-chunk plain
    tables): ``input_ids[id_offsets[i]:id_offsets[i+1]]`` is row i; its ``n_i`` completion
    positions are rows ``pos_offsets[i]:pos_offsets[i+1]`` of ``topk_ids`` / ``topk_logprobs``
    (shape ``[positions, k]``) and ``token_logprob``."""

    input_ids: np.ndarray
    id_offsets: np.ndarray
    completion_start: np.ndarray
    pos_offsets: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    token_logprob: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.completion_start)

    def sequence(self, i: int) -> np.ndarray:
        return self.input_ids[self.id_offsets[i]:self.id_offsets[i + 1]]


def view(table: pa.Table, meta: CacheMeta) -> TopkView:
    """Numpy views of a cache table (decoding the compact codec first)."""
    table, meta = decode_compact(table, meta)
    if table.num_rows and any(table.column(c).num_chunks > 1 for c in ("input_ids", "topk_ids")):
        table = table.combine_chunks()
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    start = table.column("completion_start").to_numpy().astype(np.int64)
    return TopkView(
        input_ids=_values(table, "input_ids"),
        id_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        completion_start=start,
        pos_offsets=np.concatenate([[0], np.cumsum(lengths - start)]),
        topk_ids=_values(table, "topk_ids").reshape(-1, meta.k),
        topk_logprobs=_values(table, "topk_logprobs").reshape(-1, meta.k),
        token_logprob=_values(table, "token_logprob"),
    )


class CacheReader:
    """Streams a cache folder for training: memory-mapped files, one row group at a time, and
    `slice(start, n)` views that cost no copy (Arrow slices of the mapped buffers)."""

    def __init__(self, path: str | Path, *, tokenizer_hash: str | None = None, what: str = "the student tokenizer"):
        self.files = cache_files(path)
        self.meta = read_meta(path)
        if tokenizer_hash is not None:
            self.meta.check_tokenizer(tokenizer_hash, what=what)

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for file in self.files:
            parquet = pq.ParquetFile(file, memory_map=True)
            for group in range(parquet.metadata.num_row_groups):
                yield parquet.read_row_group(group, columns=columns)

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        tables = list(self.tables(columns))
        return pa.concat_tables(tables) if tables else cache_schema(self.meta).empty_table()

    def lengths(self) -> pa.Table:
        """trace_id, teacher, row number and token count of every row (cheap: no top-k read)."""
        pieces = []
        for table in self.tables(["trace_id", "teacher", "input_ids", "completion_start"]):
            pieces.append(pa.table({
                "trace_id": table.column("trace_id"),
                "teacher": table.column("teacher"),
                "tokens": pc.list_value_length(table.column("input_ids")),
                "completion_start": table.column("completion_start"),
            }))
        return pa.concat_tables(pieces) if pieces else pa.table({"trace_id": pa.array([], pa.string())})


def slice_view(table: pa.Table, meta: CacheMeta, start: int, length: int) -> TopkView:
    """A trainer step's rows: an Arrow slice (zero-copy) turned into numpy views."""
    return view(table.slice(start, length), meta)
