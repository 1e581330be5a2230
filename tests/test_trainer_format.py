"""topk-v1 format: schema, metadata, compact codec error bound, zero-copy views, other readers."""

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.trainer.topk_format import (
    MAX_STEPS,
    CacheFormatError,
    CacheMeta,
    CacheReader,
    TokenizerMismatchError,
    build_plain_table,
    decode_compact,
    encode_compact,
    read_meta,
    slice_view,
    view,
    write_cache,
)

K, V = 8, 1000


def _table(rows=5, seed=0):
    rng = np.random.default_rng(seed)
    meta = CacheMeta(teacher="T", revision="r1", tokenizer_hash="abc", k=K, vocab_size=V)
    lengths = rng.integers(5, 40, rows)
    starts = np.array([rng.integers(1, n) for n in lengths])
    n = int((lengths - starts).sum())
    ids = np.stack([rng.choice(V, K, replace=False) for _ in range(n)])
    logits = rng.normal(size=(n, V)) * 3
    lse = np.log(np.exp(logits).sum(1))
    lp = np.take_along_axis(logits, ids, 1) - lse[:, None]
    order = np.argsort(-lp, 1)
    ids, lp = np.take_along_axis(ids, order, 1), np.take_along_axis(lp, order, 1)
    lp[0, -1] = lp[0, 0] - 40.0  # far below the top-1: the compact codec clamps it
    table = build_plain_table(
        meta, trace_id=[f"t{i}" for i in range(rows)], problem_id=[f"p{i}" for i in range(rows)],
        input_ids=[rng.integers(0, V, n_i).astype(np.uint32) for n_i in lengths], completion_start=starts,
        topk_ids=ids, topk_logprobs=lp, token_logprob=rng.normal(size=n) - 5)
    return table, meta, ids, lp


def test_plain_schema_types_and_metadata_round_trip(tmp_path):
    table, meta, _, _ = _table()
    path = write_cache(tmp_path / "part-00000.parquet", table, meta)
    schema = pq.read_schema(path)
    assert schema.field("input_ids").type == pa.list_(pa.uint32())
    assert schema.field("completion_start").type == pa.int32()
    assert schema.field("topk_ids").type == pa.list_(pa.int32())
    assert schema.field("topk_logprobs").type == pa.list_(pa.float16())
    assert schema.field("token_logprob").type == pa.list_(pa.float16())
    assert read_meta(path) == meta
    assert schema.metadata[b"topk.format"] == b"topk-v1" and schema.metadata[b"topk.k"] == b"8"
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    # metadata also rides on the input_ids field (kept by writers that drop schema metadata)
    bare = pq.read_table(path).replace_schema_metadata(None)
    pq.write_table(bare, tmp_path / "bare.parquet")
    assert read_meta(tmp_path / "bare.parquet") == meta


def test_compact_codec_error_is_bounded_and_ids_survive(tmp_path):
    table, meta, ids, lp = _table(rows=20)
    compact, cmeta = encode_compact(table, meta, step=1 / 16)
    assert compact.schema.field("topk_id_gaps").type == pa.list_(pa.uint32())
    assert compact.schema.field("topk_steps").type == pa.list_(pa.uint8())
    write_cache(tmp_path / "c.parquet", compact, cmeta)
    back, bmeta = decode_compact(pq.read_table(tmp_path / "c.parquet"), read_meta(tmp_path / "c.parquet"))
    v = view(back, bmeta)
    order = np.argsort(ids, 1)
    assert (v.topk_ids == np.take_along_axis(ids, order, 1)).all()
    # the codec sees the plain cache's float16 values
    want = np.take_along_axis(lp.astype(np.float16).astype(np.float64), order, 1)
    top1 = lp[:, :1].astype(np.float16).astype(np.float64)
    clamped = (top1 - want) > MAX_STEPS / 16
    err = np.abs(v.topk_logprobs.astype(np.float64) - want)
    # documented bound: step/2 plus half a float16 ulp of the top-1 and of the decoded value
    bound = 1 / 32 + (np.abs(top1) + np.abs(want)) * 2.0**-11 + 1e-9
    assert (err[~clamped] <= bound[~clamped]).all()
    assert clamped.sum() == 1 and np.isclose(v.topk_logprobs[clamped][0], top1[0, 0] - MAX_STEPS / 16, atol=0.02)
    assert (v.token_logprob == table.column("token_logprob").combine_chunks().flatten().to_numpy()).all()


def test_compact_is_smaller_on_disk(tmp_path):
    table, meta, _, _ = _table(rows=60)
    compact, cmeta = encode_compact(table, meta)
    plain_size = write_cache(tmp_path / "p.parquet", table, meta).stat().st_size
    compact_size = write_cache(tmp_path / "c.parquet", compact, cmeta).stat().st_size
    assert compact_size < plain_size


def test_slice_view_is_zero_copy_and_aligned(tmp_path):
    table, meta, ids, lp = _table(rows=6)
    write_cache(tmp_path / "part-00000.parquet", table, meta)
    loaded = CacheReader(tmp_path).read_all()
    v = slice_view(loaded, meta, 2, 3)
    assert v.rows == 3
    full = view(loaded, meta)
    p0 = full.pos_offsets[2]
    assert (v.topk_ids == ids[p0:p0 + len(v.topk_ids)]).all()
    assert (v.sequence(0) == full.sequence(2)).all()
    # numpy views share the Arrow buffers: no copy was made
    base = loaded.column("topk_ids").chunk(0).values.buffers()[1].address
    assert v.topk_ids.__array_interface__["data"][0] >= base


def test_tokenizer_mismatch_is_a_clear_error(tmp_path):
    table, meta, _, _ = _table()
    write_cache(tmp_path / "part-00000.parquet", table, meta)
    CacheReader(tmp_path, tokenizer_hash="abc")
    with pytest.raises(TokenizerMismatchError, match="made with tokenizer abc.*hashes to zzz"):
        CacheReader(tmp_path, tokenizer_hash="zzz", what="student S")


def test_readable_by_polars_and_duckdb_and_refuses_non_caches(tmp_path):
    table, meta, _, _ = _table(rows=4)
    compact, cmeta = encode_compact(table, meta)
    write_cache(tmp_path / "c.parquet", compact, cmeta)
    frame = pl.read_parquet(tmp_path / "c.parquet")
    assert frame["topk_steps"].dtype == pl.List(pl.UInt8) and frame.height == 4
    n = duckdb.sql(f"select sum(len(topk_id_gaps)) from '{tmp_path / 'c.parquet'}'").fetchall()[0][0]
    assert n == len(pa.concat_arrays([c.flatten() for c in table.column("topk_ids").chunks]))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(CacheFormatError, match="not a topk-v1 cache"):
        read_meta(tmp_path / "other.parquet")
    with pytest.raises(CacheFormatError, match="k=0"):
        CacheMeta(teacher="T", revision="r", tokenizer_hash="h", k=0, vocab_size=10)
