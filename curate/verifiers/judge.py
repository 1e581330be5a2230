"""`curate verify judge`: an LLM judge (or a reward model behind a chat endpoint) scores traces
whose problems have no checkable answer: no reference answer and no tests.

The judge is any OpenAI-compatible server, named like a teacher (``openai:BASE_URL#MODEL``),
and is called through the generators' HTTP client (retries with backoff on 429/5xx/timeouts,
rate limits, fatal 401/403/404). Requests go out ``max_in_flight`` at a time; identical
prompts in a batch are asked once. Sampling is greedy by default so a rerun scores alike. Each
answer is appended to a log in the unit's scratch folder as it arrives, keyed by the request
body's hash, so a killed unit resumes without paying for a request twice.

Columns (a verifier never drops a row):

* ``judge__verdict``: pass (score >= ``pass_threshold``), fail, parse_error (the reply holds no
  score in range), request_error (the request failed after its retries), skipped (the problem
  has a reference answer or tests, or its domain is not judged);
* ``judge__score``: the parsed score (null unless pass or fail);
* ``judge__reply``: the judge's reply (its head, ``keep_reply_chars``), so a verdict can be read;
* ``judge__error``: why a request failed, or why a reply did not parse;
* ``judge__model``: the model that answered, as the server named it;
* ``judge__template_hash``: the hash of the system prompt + template; the manifest records the
  template itself (in the config), the judge's URL (credentials removed) and the hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from pydantic import Field, field_validator

from curate.generators.generate import ResultLog
from curate.generators.openai_client import (
    FatalHTTPError,
    JsonClient,
    RateLimiter,
    RequestFailed,
    RetryPolicy,
    api_key_from_env,
    run_async,
)
from curate.generators.teachers import parse_spec, redact_url
from curate.stage import BatchResult, Resources, Stage, StageConfig
from curate.verifiers.judge_prompt import (
    DEFAULT_SCORE_PATTERN,
    DEFAULT_SYSTEM,
    DEFAULT_TEMPLATE,
    parse_reply,
    render,
    template_fields,
    template_hash,
)

VERDICTS = ("pass", "fail", "parse_error", "request_error", "skipped")


class JudgeError(RuntimeError):
    """The judge cannot be used at all (no key, wrong URL or model): stop, saying what to fix."""


class JudgeConfig(StageConfig):
    judge: str = Field(description="The judge: openai:BASE_URL#MODEL (any OpenAI-compatible server).")
    api_key_env: str | None = Field(None, description="Environment variable holding the judge's API key.")
    template: str = Field(DEFAULT_TEMPLATE, description="User message; fields {prompt} {answer} {reasoning} {reference}.")
    system_prompt: str | None = Field(DEFAULT_SYSTEM, description="System message (none: null).")
    score_pattern: str = Field(DEFAULT_SCORE_PATTERN, description="Regex whose group 1 is the score; the last match counts.")
    score_min: float = Field(1.0, description="Lowest valid score.")
    score_max: float = Field(10.0, description="Highest valid score.")
    pass_threshold: float = Field(7.0, description="A score at or above this is a pass.")
    only_unverifiable: bool = Field(True, description="Judge only rows with neither a reference answer nor tests.")
    domains: list[str] = Field([], description="Domains judged (empty: all).")
    max_chars: int = Field(16000, ge=100, description="Longest text put in the prompt per field (its tail is kept).")
    keep_reply_chars: int = Field(2000, ge=0, description="Characters of the judge's reply kept in judge__reply.")
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(1024, ge=1)
    seed: int = Field(0, ge=0)
    max_in_flight: int = Field(16, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds per request before it counts as timed out.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts, dropped connections.")
    backoff_s: float = Field(1.0, gt=0, description="First retry delay (doubles, with jitter).")
    requests_per_minute: float | None = Field(None, gt=0)

    @field_validator("judge")
    @classmethod
    def _openai_spec(cls, value: str) -> str:
        kind, _, _ = parse_spec(value)
        if kind != "openai":
            raise ValueError(f"judge {value!r}: the judge must be an openai:BASE_URL#MODEL server")
        return value

    @field_validator("template")
    @classmethod
    def _template_parses(cls, value: str) -> str:
        template_fields(value)
        return value

    @field_validator("score_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"score_pattern: {exc}") from None
        if compiled.groups < 1:
            raise ValueError("score_pattern needs a group that captures the score")
        return value


class JudgeStage(Stage[JudgeConfig]):
    name = "verify_judge"
    version = "1"
    config_model = JudgeConfig
    description = "Score traces of problems with no checkable answer with an LLM judge (OpenAI-compatible server)."
    example = ("curate verify judge runs/essays --judge 'openai:http://127.0.0.1:8000/v1#Qwen2.5-72B-Instruct' "
               "--api-key-env JUDGE_KEY")
    cli = ("verify", "judge")
    requires = ("prompt", "answer", "reasoning", "reference_answer", "tests", "domain")
    score_namespace = "judge"
    # Waiting on the network, not the CPU: one worker keeps max_in_flight requests open.
    resources = Resources(cpus=1, max_workers=1)
    batch_rows = 512

    def output_fields(self) -> list[pa.Field]:
        return [
            pa.field(self.col("verdict"), pa.string()),
            pa.field(self.col("score"), pa.float64()),
            pa.field(self.col("reply"), pa.string()),
            pa.field(self.col("error"), pa.string()),
            pa.field(self.col("model"), pa.string()),
            pa.field(self.col("template_hash"), pa.string()),
        ]

    @property
    def model(self) -> str:
        return parse_spec(self.config.judge)[1]

    @property
    def base_url(self) -> str:
        return parse_spec(self.config.judge)[2] or ""

    @property
    def template_hash(self) -> str:
        return template_hash(self.config.system_prompt, self.config.template)

    def _api_key(self) -> str | None:
        return api_key_from_env(self.config.api_key_env, "verify_judge", JudgeError)

    def setup(self) -> None:
        self._api_key()  # fail before any request when the key is missing

    # -- which rows, which prompts -----------------------------------------------------------
    def _wanted(self, frame: pl.DataFrame) -> pl.Series:
        cfg = self.config
        wanted = pl.repeat(True, pl.len())
        if cfg.only_unverifiable:
            blank = lambda c: pl.col(c).cast(pl.Utf8).str.strip_chars().fill_null("") == ""  # noqa: E731
            wanted = wanted & blank("reference_answer") & blank("tests")
        if cfg.domains:
            wanted = wanted & pl.col("domain").cast(pl.Utf8).is_in(cfg.domains).fill_null(False)
        return frame.select(wanted.alias("w"))["w"]

    def _messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        user = render(self.config.template, max_chars=self.config.max_chars, prompt=row["prompt"],
                      answer=row["answer"], reasoning=row["reasoning"], reference=row["reference_answer"])
        system = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    # -- the requests ----------------------------------------------------------------------------
    def _body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        cfg = self.config
        return {"model": self.model, "messages": messages, "n": 1, "temperature": cfg.temperature,
                "max_tokens": cfg.max_tokens, "seed": cfg.seed}

    async def _ask_all(self, prompts: list[list[dict[str, str]]], log: ResultLog | None
                       ) -> list[tuple[dict | None, str | None]]:
        """(response JSON, error) per prompt, in order; answers already in ``log`` are reused."""
        cfg = self.config
        bodies = [self._body(p) for p in prompts]
        keys = [hashlib.sha256(json.dumps(b, sort_keys=True).encode()).hexdigest() for b in bodies]
        done = {r["key"]: r["data"] for r in log.load()} if log is not None else {}
        results: list[tuple[dict | None, str | None]] = [(done.get(k), None) for k in keys]
        todo = iter([i for i, k in enumerate(keys) if k not in done])
        client = JsonClient(self.base_url, api_key=self._api_key(), timeout_s=cfg.timeout_s,
                            max_in_flight=cfg.max_in_flight,
                            retry=RetryPolicy(cfg.max_retries, cfg.backoff_s, max(cfg.backoff_s, 60.0)),
                            limiter=RateLimiter(cfg.requests_per_minute, None),
                            where=f"judge {self.model} at {redact_url(self.base_url)}")

        async def worker() -> None:
            for i in todo:  # a shared iterator: each prompt is taken by one worker
                try:
                    data, _, _ = await client.post("/chat/completions", bodies[i])
                except RequestFailed as exc:
                    # Not logged: a resumed unit asks again (the server may be back).
                    results[i] = (None, exc.reason)
                    continue
                results[i] = (data, None)
                if log is not None:
                    log.append({"key": keys[i], "data": data})

        try:
            await asyncio.gather(*(worker() for _ in range(min(cfg.max_in_flight, len(prompts)))))
        finally:
            await client.aclose()
            if log is not None:
                log.close()
        return results

    def _ask(self, prompts: list[list[dict[str, str]]]) -> list[tuple[dict | None, str | None]]:
        if not prompts:
            return []
        ctx = self.unit_context
        # One log per unit: keys are content hashes, so batches need no numbering.
        log = ResultLog(Path(ctx.scratch) / "judge.jsonl") if ctx is not None else None
        try:
            return run_async(self._ask_all(prompts, log))
        except FatalHTTPError as exc:
            raise JudgeError(str(exc).replace("api_key_env", f"api_key_env ({self.config.api_key_env or 'none set'})")) \
                from None

    # -- one batch -------------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> BatchResult:
        cfg = self.config
        frame = pl.from_arrow(batch.select(list(self.requires)))
        wanted = self._wanted(frame).to_list()
        rows = frame.to_dicts()
        # Identical prompts (the same answer to the same problem) are asked once.
        keys: dict[str, int] = {}
        prompts: list[list[dict[str, str]]] = []
        slot: list[int | None] = []
        for row, want in zip(rows, wanted, strict=True):
            if not want:
                slot.append(None)
                continue
            messages = self._messages(row)
            key = repr(messages)
            if key not in keys:
                keys[key] = len(prompts)
                prompts.append(messages)
            slot.append(keys[key])
        answers = self._ask(prompts)

        pattern = re.compile(cfg.score_pattern)
        columns: dict[str, list] = {k: [] for k in ("verdict", "score", "reply", "error", "model", "template_hash")}
        digest = self.template_hash
        for index in slot:
            if index is None:
                values = ("skipped", None, None, None, None, None)
            else:
                data, error = answers[index]
                if data is None:
                    values = ("request_error", None, None, error, self.model, digest)
                else:
                    reply, model = _reply_of(data)
                    parsed = parse_reply(reply, pattern, cfg.score_min, cfg.score_max, cfg.pass_threshold)
                    kept = reply[: cfg.keep_reply_chars] if reply is not None else None
                    values = (parsed.verdict, parsed.score, kept, parsed.why, model or self.model, digest)
            for name, value in zip(columns, values, strict=True):
                columns[name].append(value)
        out = batch
        for field in self.output_fields():
            out = out.append_column(field, pa.array(columns[field.name.split("__", 1)[1]], field.type))
        counts: Counter[str] = Counter(f"verdict:{v}" for v in columns["verdict"])
        counts["requests"] = len(prompts)
        return BatchResult(out, counts=counts)

    def summarize(self, counts: Counter[str]) -> dict:
        return {
            "verdicts": {v: counts.get(f"verdict:{v}", 0) for v in VERDICTS},
            "judge": {"model": self.model, "base_url": redact_url(self.base_url),
                      "template_hash": self.template_hash, "requests": counts.get("requests", 0)},
        }


def _reply_of(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(reply text, model name) of a chat-completions response; a reply whose JSON holds no
    message is an empty reply (parse_error), not a crash."""
    choices = data.get("choices") if isinstance(data, dict) else None
    model = data.get("model") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return None, model
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    return (content if isinstance(content, str) else None), (str(model) if model else None)
