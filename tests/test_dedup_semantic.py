import numpy as np
import pyarrow as pa
import pytest

from curate.filters.embeddings import embed_texts, resolve_model
from curate.filters.semantic import SemanticConfig, SemanticDedupStage, similar_pairs
from curate.testing import run_stage_in_memory

PROMPTS = [
    "What is the sum of the interior angles of a hexagon?",
    "Find the sum of the interior angles of a hexagon.",
    "How many prime numbers are there between 10 and 30?",
    "A train travels 60 miles in 1.5 hours. What is its average speed?",
]


def _unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _planted(n=600, dim=32, seed=0):
    """n random unit vectors; rows 1, 3, 5 are tiny perturbations of rows 0, 2, 4."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    for i in (0, 2, 4):
        vectors[i + 1] = vectors[i] + 0.01 * rng.normal(size=dim)
    return _unit(vectors).astype(np.float32)


@pytest.mark.parametrize("exact_max,nprobe", [(10_000, 1), (10, 1), (10, 3)])
def test_similar_pairs_exact_and_clustered_find_the_planted_pairs(exact_max, nprobe):
    vectors = _planted()
    src, dst, sim, nn = similar_pairs(vectors, threshold=0.95, exact_max=exact_max, clusters=8, nprobe=nprobe)
    pairs = {tuple(sorted(p)) for p in zip(src.tolist(), dst.tolist(), strict=True)}
    assert pairs == {(0, 1), (2, 3), (4, 5)}
    assert (sim >= 0.95).all() and nn[0] > 0.99 and nn[10] < 0.9


def test_similar_pairs_never_pairs_a_unit_with_itself_and_handles_one_unit():
    src, dst, _, nn = similar_pairs(_unit(np.ones((1, 4), np.float32)), threshold=0.5)
    assert len(src) == 0 and np.isnan(nn[0])


def test_model_names_resolve_to_packaged_weights():
    assert resolve_model("minilm")[0] == resolve_model("all-MiniLM-L6-v2")[0] == "all-MiniLM-L6-v2"
    model_id, kind, location = resolve_model("static")
    assert (model_id, kind) == ("tokenlearn-static-model", "model2vec") and location.endswith("model")


def test_embed_texts_static_model_is_normalised_and_cached(tmp_path):
    first = embed_texts(PROMPTS, model="static", cache_dir=tmp_path)
    assert first.shape == (4, 64)
    assert np.allclose((first ** 2).sum(axis=1), 1, atol=1e-5)
    parts = sorted(tmp_path.glob("embeddings-*.parquet"))
    assert len(parts) == 1
    again = embed_texts([PROMPTS[2], "a new text", PROMPTS[0]], model="static", cache_dir=tmp_path)
    assert np.array_equal(again[0], first[2]) and np.array_equal(again[2], first[0])
    assert len(list(tmp_path.glob("embeddings-*.parquet"))) == 2  # only the new text was added


def _table():
    return pa.table({
        "trace_id": ["t0", "t1", "t2", "t3", "t4"], "problem_id": ["p0", "p1", "p2", "p3", "p0"],
        "prompt": [*PROMPTS, PROMPTS[0]], "reasoning": [""] * 5, "answer": ["720", "720", "5", "40", "721"],
        "math__verdict": ["incorrect", "correct", "correct", "correct", "incorrect"],
    })


@pytest.mark.parametrize("model,threshold", [("all-MiniLM-L6-v2", 0.9), ("static", 0.85)])
def test_paraphrased_problems_cluster_and_the_verified_one_survives(model, threshold):
    for exact_max in (100_000, 2):  # exact search, and the k-means path
        cfg = SemanticConfig(model=model, threshold=threshold, exact_max=exact_max, clusters=2, nprobe=2)
        out = run_stage_in_memory(SemanticDedupStage(cfg), _table(), batch_rows=2).table
        assert out.column("semantic__cluster_id").to_pylist() == ["p1", "p1", "p2", "p3", "p1"], exact_max
        assert out.column("semantic__is_survivor").to_pylist() == [False, True, True, True, False]
        sims = out.column("semantic__nn_similarity").to_pylist()
        assert sims[0] == sims[4] >= threshold > sims[2]


def test_config_rejects_unknown_field():
    with pytest.raises(ValueError, match="prompt or response"):
        SemanticConfig(field="answer")
