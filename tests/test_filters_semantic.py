import pyarrow as pa

from curate.filters.embeddings import embed_texts
from curate.filters.semantic import SemanticConfig, SemanticDedupStage
from curate.testing import run_stage_in_memory

PROMPTS = [
    "What is the sum of the interior angles of a hexagon?",
    "Find the sum of the interior angles of a hexagon.",
    "How many prime numbers are there between 10 and 30?",
    "A train travels 60 miles in 1.5 hours. What is its average speed?",
]


def test_embeddings_are_normalised_and_cached(tmp_path):
    first = embed_texts(PROMPTS[:2], cache_dir=tmp_path)
    assert first.shape == (2, 384)
    assert abs(float((first[0] ** 2).sum()) - 1) < 1e-5
    again = embed_texts(PROMPTS[:2], cache_dir=tmp_path)
    assert (first == again).all()
    assert len(list(tmp_path.glob("embeddings-*.parquet"))) == 1


def test_paraphrased_problems_cluster_and_one_survives():
    table = pa.table({
        "trace_id": ["t0", "t1", "t2", "t3", "t4"], "problem_id": ["p0", "p1", "p2", "p3", "p0"],
        "prompt": [*PROMPTS, PROMPTS[0]], "reasoning": [""] * 5, "answer": ["720", "720", "5", "40", "721"],
        "math__verdict": ["incorrect", "correct", "correct", "correct", "incorrect"],
    })
    for exact_max in (100_000, 2):  # exact search, and the k-means path
        out = run_stage_in_memory(SemanticDedupStage(SemanticConfig(threshold=0.9, exact_max=exact_max)), table).table
        clusters = out.column("semantic__cluster_id").to_pylist()
        assert clusters == ["p1", "p1", "p2", "p3", "p1"], exact_max  # p1 has the verified trace
        assert out.column("semantic__is_survivor").to_pylist() == [False, True, True, True, False]
        sims = out.column("semantic__nn_similarity").to_pylist()
        assert sims[0] > 0.9 and sims[2] < 0.9
