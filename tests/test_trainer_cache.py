"""cache-logits against a plain full-softmax reference; runner resume; divergence scores."""

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate.executors import InProcessExecutor
from curate.runner import run_stage
from curate.testing import run_stage_in_memory
from curate.testing_models import build_tiny_llama
from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage
from curate.trainer.divergence import DivergenceConfig, DivergenceStage
from curate.trainer.topk_format import MAX_STEPS, TokenizerMismatchError, meta_of_schema, read_meta, view


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"teacher": build_tiny_llama(root / "teacher", seed=1),
            "student": build_tiny_llama(root / "student", seed=2),
            "other": build_tiny_llama(root / "other", vocab=300, seed=3)}


def traces(n, offset=0):
    reasoning = [f"Let x be a real number. First, compute the product {i}. " * (1 + i % 3) for i in range(n)]
    answer = [f"The answer is \\boxed{{{i}}}." for i in range(n)]
    if n > 3:
        reasoning[3], answer[3] = None, ""  # nothing to cache: rejected
    return pa.table({"trace_id": [f"t{offset + i:03d}" for i in range(n)], "problem_id": [f"p{i % 4}" for i in range(n)],
                     "prompt": [f"What is {i} + {i}?" for i in range(n)], "reasoning": reasoning, "answer": answer})


def reference(model_dir, seq, start):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(seq.astype(np.int64))[None]).logits[0].float()
    return torch.log_softmax(logits, -1)[start - 1:-1]  # rows predict tokens start..end


def test_cache_matches_full_softmax_at_every_position(models):
    stage = CacheLogitsStage(CacheLogitsConfig(teacher=str(models["teacher"]), k=4, token_budget=150, position_chunk=7,
                                               dtype="float32"))
    result = run_stage_in_memory(stage, traces(8))
    assert result.table.num_rows == 7 and result.rejects.column("raw").to_pylist() == ["t003"]
    meta = meta_of_schema(result.table.schema)
    assert (meta.k, meta.teacher, meta.codec) == (4, "teacher", "plain")
    v = view(result.table, meta)
    outside = 0
    for i in range(v.rows):
        seq, start = v.sequence(i), int(v.completion_start[i])
        ref = reference(models["teacher"], seq, start)
        p0, p1 = v.pos_offsets[i], v.pos_offsets[i + 1]
        assert p1 - p0 == len(seq) - start == ref.shape[0]
        top = ref.topk(4)
        assert (v.topk_ids[p0:p1] == top.indices.numpy()).all()
        # float16 rounding: half an ulp of values of magnitude < 8 is < 2^-9
        np.testing.assert_allclose(v.topk_logprobs[p0:p1].astype(np.float32), top.values.numpy(), atol=2.0**-8, rtol=0)
        realised = ref.gather(1, torch.as_tensor(seq[start:].astype(np.int64))[:, None])[:, 0].numpy()
        np.testing.assert_allclose(v.token_logprob[p0:p1].astype(np.float32), realised, atol=2.0**-8, rtol=0)
        outside += int((~(v.topk_ids[p0:p1] == seq[start:, None].astype(np.int32)).any(1)).sum())
    assert outside > 50  # the realised-token log-prob is checked where it is outside the top-k


def test_compact_cache_within_documented_bound(models):
    cfg = dict(teacher=str(models["teacher"]), k=4, token_budget=400, dtype="float32")
    plain = run_stage_in_memory(CacheLogitsStage(CacheLogitsConfig(**cfg)), traces(5)).table
    compact = run_stage_in_memory(CacheLogitsStage(CacheLogitsConfig(**cfg, codec="compact")), traces(5)).table
    vp, vc = view(plain, meta_of_schema(plain.schema)), view(compact, meta_of_schema(compact.schema))
    order = np.argsort(vp.topk_ids, 1)
    assert (vc.topk_ids == np.take_along_axis(vp.topk_ids, order, 1)).all()
    want = np.take_along_axis(vp.topk_logprobs.astype(np.float64), order, 1)
    assert (np.abs(vc.topk_logprobs - want) <= 1 / 32 + 2 * np.abs(want) * 2.0**-11 + 1e-6)[
        (want.max(1, keepdims=True) - want) < MAX_STEPS / 16].all()


def _write_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(traces(8), src / "part-00000.parquet")
    pq.write_table(traces(12, offset=100), src / "part-00001.parquet")
    return src


def test_killed_cache_run_resumes_without_duplicates(models, tmp_path, monkeypatch):
    monkeypatch.setattr(CacheLogitsStage, "batch_rows", 4)
    src, out = _write_inputs(tmp_path), tmp_path / "02-cache_logits"
    calls = {"n": 0}
    original = CacheLogitsStage._compute

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # unit 0 (2 batches) done, unit 1 has finished 1 of 3 batches
            raise RuntimeError("killed")
        return original(self, batch)

    monkeypatch.setattr(CacheLogitsStage, "_compute", flaky)
    stage = lambda: CacheLogitsStage(CacheLogitsConfig(teacher=str(models["teacher"]), k=4, dtype="float32"))  # noqa: E731
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(stage(), input_dir=src, out_dir=out, executor=InProcessExecutor(), progress=False)
    calls["n"] = 0
    manifest = run_stage(stage(), input_dir=src, out_dir=out, executor=InProcessExecutor(), progress=False)
    assert calls["n"] == 2  # only the two batches that never finished were computed again
    assert (manifest.units_resumed, manifest.counts["batches_resumed"], manifest.output_table) == (1, 1, "logits")
    assert (manifest.rows_in, manifest.rows_out, manifest.rows_rejected) == (20, 18, 2)
    assert manifest.summary["k"] == 4 and manifest.counts["rows_cached"] == 18
    ids = pl.read_parquet(out / "part-*.parquet")["trace_id"]
    assert ids.len() == 18 and ids.n_unique() == 18
    assert read_meta(out).teacher == "teacher"  # metadata survives the runner's shard writer
    # the resumed cache equals an uninterrupted one
    clean = tmp_path / "clean"
    monkeypatch.setattr(CacheLogitsStage, "_compute", original)
    run_stage(stage(), input_dir=src, out_dir=clean, executor=InProcessExecutor(), progress=False)
    a = pl.read_parquet(out / "part-*.parquet").sort("trace_id")
    b = pl.read_parquet(clean / "part-*.parquet").sort("trace_id")
    assert a.equals(b)


def test_divergence_scores_and_tokenizer_mismatch(models, tmp_path):
    cache = tmp_path / "cache"
    run_stage(CacheLogitsStage(CacheLogitsConfig(teacher=str(models["teacher"]), k=8, dtype="float32")), input_dir=_write_inputs(tmp_path),
              out_dir=cache, executor=InProcessExecutor(), progress=False)
    batch = pa.concat_tables([traces(8), traces(2, offset=900)])  # two traces are not in the cache
    stage = DivergenceStage(DivergenceConfig(cache=str(cache), student=str(models["student"]),
                                             reference=str(models["teacher"])))
    result = run_stage_in_memory(stage, batch, batch_rows=5)
    out = pl.from_arrow(result.table)
    assert result.counts["not_in_cache"] == 3  # t003 (rejected from the cache) and the two unknown ids
    scored = out.filter(pl.col("divergence__kd").is_not_null())
    assert scored.height == 7 and (scored["divergence__kd"] > 0).all()
    # the reference is the teacher itself: its perplexity is exp(teacher NLL read from the cache)
    np.testing.assert_allclose(np.log(scored["divergence__ref_ppl"].to_numpy()),
                               scored["divergence__teacher_nll"].to_numpy(), atol=5e-3)
    assert (scored["divergence__tokens"] > 0).all() and out["divergence__kd"].null_count() == 3
    with pytest.raises(TokenizerMismatchError, match="student"):
        DivergenceStage(DivergenceConfig(cache=str(cache), student=str(models["other"]))).setup()


@pytest.mark.parametrize(("vocab", "k", "block"), [(1000, 8, 16), (1024, 4, 64), (5003, 32, 64), (300, 32, 64)])
def test_block_topk_equals_torch_topk(vocab, k, block):
    from curate.trainer.teacher import block_topk

    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(37, vocab, generator=gen) * 4
    x[0, -1] = 100.0  # the winner in the short last block
    x[1, :] = -3.0  # all tied: any k ids, the same values
    x[1, 5] = 0.0
    values, ids = block_topk(x, k, block)
    ref = x.topk(k, dim=-1)
    assert torch.equal(values, ref.values)
    assert torch.equal(ids[2:], ref.indices[2:]) and ids[0, 0] == vocab - 1 and ids[1, 0] == 5
    assert torch.equal(x.gather(1, ids), values) and all(len(set(r.tolist())) == k for r in ids)


def test_data_parallel_workers_claim_different_gpus(tmp_path, monkeypatch, caplog):
    """--device auto on a 3-GPU machine: each worker locks a free GPU; a fourth shares cuda:0."""
    import tempfile

    from curate.trainer import teacher

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    monkeypatch.setattr(teacher, "_LOCKS", [])
    assert [teacher.claim_device("auto") for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:2"]
    assert sorted(p.name for p in (tmp_path / "curate-gpu-locks").iterdir()) == [
        "4-5-6-0.lock", "4-5-6-1.lock", "4-5-6-2.lock"]
    assert teacher.claim_device("auto") == "cuda:0" and "all 3 GPUs are claimed" in caplog.text
    assert teacher.claim_device("cuda:2") == "cuda:2"  # an explicit device is taken as given
    for handle in teacher._LOCKS:  # a worker that exits frees its GPU for the next one
        handle.close()
    teacher._LOCKS.clear()
    assert teacher.claim_device("auto") == "cuda:0"
    for handle in teacher._LOCKS:
        handle.close()


def test_padded_batches_equal_unpadded_sequences(models):
    """The GPU layout (padded token-budget batches, masked attention) gives the CPU layout's values."""
    from transformers import AutoModelForCausalLM

    from curate.trainer.sequences import trace_sequences
    from curate.trainer.teacher import forward_topk, load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(models["teacher"], dtype=torch.float32).eval()
    seqs = trace_sequences(load_tokenizer(str(models["teacher"])), traces(7), max_tokens=512)[0]
    runs = {}
    for per_sequence in (False, True):
        rows = {}
        for group, outs in forward_topk(model, seqs.input_ids, seqs.completion_start, k=4, token_budget=150,
                                        position_chunk=7, device="cpu", per_sequence=per_sequence):
            rows.update(zip(group.tolist(), outs, strict=True))
        runs[per_sequence] = [rows[i] for i in range(len(seqs.input_ids))]
    assert len(runs[False]) == 6 and sum(len(r.token_logprob) for r in runs[False]) > 100
    for a, b in zip(runs[False], runs[True], strict=True):
        assert (a.topk_ids == b.topk_ids).all()
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-4)
        np.testing.assert_allclose(a.token_logprob, b.token_logprob, atol=1e-4)


def test_sigkilled_cache_logits_cli_resumes_without_duplicates(models, tmp_path):
    """A real SIGKILL of `curate cache-logits` (and its workers) after the first batch of a unit:
    the rerun reuses that batch and writes exactly the rows of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, write_jsonl

    rows = [{"prompt": f"What is {i} + {i}?", "response": f"<think>Add {i} to {i}. " * (1 + i % 4) + f"</think>{2 * i}",
             "teacher": "T"} for i in range(600)]
    data = write_jsonl(tmp_path / "traces.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "curate.cli"]
    cache = ["cache-logits", "--teacher", str(models["teacher"]), "--k", "4", "--dtype", "float32", "--workers", "1"]
    for run in ("ref", "killed"):
        subprocess.run([*cli, "import", str(data), "--out", str(tmp_path / run), "--domain", "math"], check=True,
                       env=env, capture_output=True)
    subprocess.run([*cli, *cache[:1], str(tmp_path / "ref"), *cache[1:]], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cli, *cache[:1], str(tmp_path / "killed"), *cache[1:]], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "killed").glob("*-cache_logits/_scratch/*/batch-*.parquet")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = next((tmp_path / "killed").glob("*-cache_logits"))
    assert not (step / "_manifest.json").exists() and not list(step.glob("part-*.parquet"))  # killed mid-unit
    subprocess.run([*cli, *cache[:1], str(tmp_path / "killed"), *cache[1:]], check=True, env=env, capture_output=True)
    manifest = json.loads((step / "_manifest.json").read_text())
    assert manifest["counts"]["batches_resumed"] >= 1
    got = pl.read_parquet(step / "part-*.parquet").sort("trace_id")
    want = pl.read_parquet(next((tmp_path / "ref").glob("*-cache_logits")) / "part-*.parquet").sort("trace_id")
    assert got.height == 600 == got["trace_id"].n_unique() and got.equals(want)
