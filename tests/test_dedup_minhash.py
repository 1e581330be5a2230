import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curate.filters.minhash import (
    MinHashConfig,
    MinHashDedupStage,
    candidate_edges,
    components,
    edge_jaccard,
    lsh_params,
    shingle_hashes,
)
from curate.testing import run_stage_in_memory

BASE = ("we first compute the sum of the roots using vieta formulas then we substitute the values "
        "into the expression and simplify carefully to obtain the final result which is twelve")
OTHER = "a completely different argument about triangles and circles inscribed in a square " * 3


def _traces(rows, verdicts=None):
    table = pa.table({
        "trace_id": [r[0] for r in rows], "problem_id": ["p"] * len(rows), "teacher": [r[1] for r in rows],
        "prompt": ["q"] * len(rows), "reasoning": [r[2] for r in rows], "answer": [r[3] for r in rows],
    })
    return table.append_column("math__verdict", pa.array(verdicts)) if verdicts else table


def test_lsh_params_match_datasketch():
    datasketch_lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.5, 0.7, 0.8, 0.9):
        for weight in (0.5, 0.1):
            ours = lsh_params(threshold, 128, weight)
            assert ours == datasketch_lsh._optimal_param(threshold, 128, weight, 1 - weight), (threshold, weight)


def test_candidate_edges_link_each_row_to_the_next_in_its_bucket():
    keys = np.array([[1, 7], [1, 8], [2, 8], [1, 9], [1, 8]], dtype=np.uint64)
    # band 0 bucket {0, 1, 3, 4}; band 1 bucket {1, 2, 4}
    chain = sorted(map(tuple, candidate_edges(keys, window=1).tolist()))
    assert chain == [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)]
    window2 = sorted(map(tuple, candidate_edges(keys, window=2).tolist()))
    assert window2 == [(0, 1), (0, 3), (1, 2), (1, 3), (1, 4), (2, 4), (3, 4)]
    rows = sorted(map(tuple, candidate_edges(keys[:2], np.array([10, 20]), window=1).tolist()))
    assert rows == [(10, 20)]


def test_shingles_and_exact_jaccard():
    texts = pl.Series(["a b c d e f", "A b, c d e  f!", "a b c d e g", "x y", ""])
    hashes, offsets, n_words = shingle_hashes(texts, 5)
    assert n_words.tolist() == [6, 6, 6, 2, 0]
    assert np.diff(offsets).tolist() == [2, 2, 2, 1, 0]  # a short text is one shingle; empty has none
    sets = pl.DataFrame({"row": [0, 1, 2], "s": [hashes[offsets[i]:offsets[i + 1]].tolist() for i in range(3)]},
                        schema={"row": pl.Int64, "s": pl.List(pl.UInt64)})
    sims = edge_jaccard(np.array([[0, 1], [0, 2]]), sets, max_elements=3)  # forces two chunks
    assert sims.tolist() == [1.0, pytest.approx(1 / 3)]


def test_components():
    assert components(5, np.array([0, 3]), np.array([1, 4])).tolist() == [0, 0, 1, 2, 2]


def test_clusters_near_duplicates_and_prefers_verified_then_teacher_then_shorter():
    words = BASE.split()
    near = " ".join(words[:-1] + ["thirteen"])  # + answer "12": 2 of 27 5-grams differ, Jaccard 25/29
    table = _traces([
        ("a", "T1", BASE, "12"),
        ("b", "T2", near, "12"),
        ("c", "T3", OTHER, "5"),
        ("d", "T4", BASE + " and we double check it", "12"),
        ("e", "T1", "", ""),
        ("f", "T2", "", ""),
    ], verdicts=["incorrect", "correct", "correct", "correct", "correct", "correct"])
    out = run_stage_in_memory(MinHashDedupStage(MinHashConfig(threshold=0.7)), table, batch_rows=4).table
    frame = pl.from_arrow(out).select("trace_id", "minhash__cluster_id", "minhash__cluster_size",
                                      "minhash__is_survivor")
    # b and d are verified; b is shorter. Empty traces are never clustered together.
    assert frame.rows() == [("a", "b", 3, False), ("b", "b", 3, True), ("c", "c", 1, True), ("d", "b", 3, False),
                            ("e", "e", 1, True), ("f", "f", 1, True)]
    jac = dict(zip(out.column("trace_id").to_pylist(), out.column("minhash__max_jaccard").to_pylist(), strict=True))
    assert jac["c"] is None and jac["b"] == pytest.approx(25 / 29)

    preferred = MinHashConfig(threshold=0.7, prefer_teachers=["T4"])
    out = run_stage_in_memory(MinHashDedupStage(preferred), table).table
    assert out.column("minhash__cluster_id").to_pylist()[:4] == ["d", "d", "c", "d"]


def test_exact_jaccard_check_rejects_lsh_false_positives():
    # 4 bands of 1 row: nearly every pair collides; the exact check must keep them apart.
    table = _traces([("a", "T", BASE, ""), ("b", "T", BASE.replace("roots", "squares").replace("sum", "product"), ""),
                     ("c", "T", OTHER, "")])
    checked = MinHashConfig(threshold=0.9, num_perm=4, bands=4, rows=1)
    out = run_stage_in_memory(MinHashDedupStage(checked), table).table
    assert out.column("minhash__cluster_size").to_pylist() == [1, 1, 1]
    unchecked = MinHashConfig(threshold=0.9, num_perm=4, bands=4, rows=1, verify_jaccard=False)
    out = run_stage_in_memory(MinHashDedupStage(unchecked), table).table
    assert out.column("minhash__cluster_size").to_pylist()[:2] == [2, 2]


def test_signatures_written_with_algorithm_version(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "sigs.parquet"
    table = _traces([("a", "T", BASE, ""), ("b", "T", OTHER, "")])
    run_stage_in_memory(MinHashDedupStage(MinHashConfig(num_perm=64, signatures_out=str(path))), table)
    sigs = pq.read_table(path)
    assert sigs.column("trace_id").to_pylist() == ["a", "b"]
    assert len(sigs.column("signature")[0]) == 64
    assert sigs.schema.metadata[b"algorithm"].decode().startswith("curate-minhash/4;rensa=")


def test_config_errors():
    with pytest.raises(ValueError, match="field must be one of"):
        MinHashConfig(field="title")
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashConfig(num_perm=16, bands=5, rows=4)


def test_byte_tokeniser_matches_lower_then_split_on_separators():
    import re

    from curate.filters.shingles import SEPARATORS, word_hashes

    texts = ["Ünïcode ÉTÉ été\u00a0x", "  lead\u00a0\u00a0 trail  ", "ΣΑΣ σας", "a\u00c2b",
             "\\frac{A}{B}=C_{2}", "", None, "x", "Straße İstanbul KELVIN \u212a", "tab\there\r\nnew—dash"]
    split = "[" + re.escape("".join(SEPARATORS)) + "]+"
    reference = [[w for w in re.split(split, (t or "").lower()) if w] for t in texts]
    hashes, offsets = word_hashes(pl.Series(texts, dtype=pl.Utf8))
    assert np.diff(offsets).tolist() == [len(r) for r in reference]
    # each word's hash is the hash of that word alone, so equal words hash equal across rows
    alone, _ = word_hashes(pl.Series([w for r in reference for w in r]))
    assert hashes.tolist() == alone.tolist()
    assert reference[2] == ["σας", "σας"] and hashes[offsets[2]] == hashes[offsets[2] + 1]
    assert len(set(hashes.tolist())) == len({w for r in reference for w in r})


def test_candidate_edges_same_for_packed_sort_and_wide_row_ids():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 4, size=(40, 3)).astype(np.uint64)  # few distinct keys: big buckets
    small = candidate_edges(keys, np.arange(40), window=2)
    wide = candidate_edges(keys, np.arange(40) + 2**30, window=2)  # past the packed sort's 24 row bits
    assert len(small) and (wide - 2**30).tolist() == small.tolist()
