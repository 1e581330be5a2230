"""`openai:BASE_URL#MODEL` teachers: any OpenAI-compatible server (vLLM serve, SGLang, TGI,
llama.cpp server, hosted APIs), asynchronously.

Chat mode posts to ``/chat/completions``, raw mode to ``/completions``; one request per sample
(``n: 1`` with the sample's own seed), so every (problem, teacher, sample, seed) key is resumable
on its own. At most ``max_in_flight`` requests are open per teacher: that many worker coroutines
pull from the request list, so memory stays flat however many requests a shard holds.

Parameters beyond OpenAI's own (``top_k``, ``min_p``, ``repetition_penalty``) are sent only when
set away from their neutral value, so strict hosted APIs accept the default request. Log-probs
ask vLLM for token ids (``return_tokens_as_token_ids``); set ``extra_body:
{return_tokens_as_token_ids: null}`` for servers that refuse the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from curate.generators.backend_base import (
    Backend,
    GenerationError,
    GenRequest,
    GenResult,
    OnResult,
    topk_arrays,
)
from curate.generators.openai_client import (
    FatalHTTPError,
    JsonClient,
    RateLimiter,
    RequestFailed,
    RetryPolicy,
    api_key_from_env,
    run_async,
)
from curate.generators.teachers import Teacher

_TOKEN_ID_PREFIX = "token_id:"


def api_key_of(teacher: Teacher) -> str | None:
    return api_key_from_env(teacher.options.api_key_env, f"teacher {teacher.name}", GenerationError)


def request_body(teacher: Teacher, request: GenRequest) -> dict[str, Any]:
    o = teacher.options
    body: dict[str, Any] = {
        "model": teacher.model, "n": 1, "seed": request.seed, "max_tokens": o.max_tokens,
        "temperature": o.temperature, "top_p": o.top_p,
    }
    if request.messages is not None:
        body["messages"] = request.messages
    else:
        body["prompt"] = request.prompt
    if o.stop:
        body["stop"] = list(o.stop)
    if o.presence_penalty:
        body["presence_penalty"] = o.presence_penalty
    if o.frequency_penalty:
        body["frequency_penalty"] = o.frequency_penalty
    if o.top_k > 0:
        body["top_k"] = o.top_k
    if o.min_p > 0:
        body["min_p"] = o.min_p
    if o.repetition_penalty != 1.0:
        body["repetition_penalty"] = o.repetition_penalty
    if o.logprobs:
        # vLLM lists the sampled token among the top candidates even when it ranks below k, so
        # ask for one more and keep the best k (OpenAI's own API caps top_logprobs at 20).
        asked = o.logprobs + 1 if o.logprobs < 20 else o.logprobs
        if request.messages is not None:
            body["logprobs"], body["top_logprobs"] = True, asked
        else:
            body["logprobs"] = asked
        body["return_tokens_as_token_ids"] = True
    for key, value in o.extra_body.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _token_id(token: str) -> int | None:
    if token.startswith(_TOKEN_ID_PREFIX):
        try:
            return int(token[len(_TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return None


def _logprob_arrays(positions: list[tuple[str, float, list[tuple[str, float]]]], k: int):
    """(sampled token, its logprob, top candidates) per position -> topk-v1 arrays, or None when
    the server gave token strings rather than ids."""
    ids = [_token_id(tok) for tok, _, _ in positions]
    if any(i is None for i in ids):
        return None
    candidates = []
    for _, _, top in positions:
        parsed = [(_token_id(t), lp) for t, lp in top]
        if any(t is None for t, _ in parsed):
            return None
        candidates.append(parsed)
    topk_ids, topk_logprobs = topk_arrays(candidates, k)
    token_logprob = np.array([lp if lp is not None else np.nan for _, lp, _ in positions], dtype=np.float32)
    return np.array(ids, dtype=np.int32), token_logprob, topk_ids, topk_logprobs


def parse_response(teacher: Teacher, request: GenRequest, data: dict[str, Any]) -> GenResult:
    choices = data.get("choices") or []
    if not choices:
        return GenResult.failed(request, f"response has no choices: {str(data)[:200]}")
    choice = choices[0]
    usage = data.get("usage") or {}
    result = GenResult(request.problem_id, request.sample_index, request.seed,
                       finish_reason=choice.get("finish_reason"),
                       prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))
    detail: dict[str, Any] = {}
    for key in ("model", "system_fingerprint"):
        if data.get(key):
            detail[key] = data[key]
    if choice.get("stop_reason") is not None:
        detail["stop_reason"] = choice["stop_reason"]
    positions: list[tuple[str, float, list[tuple[str, float]]]] = []
    logprobs = choice.get("logprobs")
    if "message" in choice:
        message = choice["message"] or {}
        result.text = message.get("content")
        # vLLM's reasoning parsers: `reasoning_content` (older) or `reasoning` (newer); DeepSeek's API too.
        result.reasoning_content = message.get("reasoning_content") or message.get("reasoning")
        for item in (logprobs or {}).get("content") or []:
            top = [(c["token"], c["logprob"]) for c in item.get("top_logprobs") or []]
            positions.append((item["token"], item["logprob"], top))
    else:
        result.text = choice.get("text")
        if logprobs:
            tokens = logprobs.get("tokens") or []
            values = logprobs.get("token_logprobs") or []
            tops = logprobs.get("top_logprobs") or [None] * len(tokens)
            for tok, lp, top in zip(tokens, values, tops, strict=False):
                positions.append((tok, lp, list((top or {}).items())))
    if teacher.options.logprobs:
        if not positions:
            detail["logprobs_missing"] = "the server returned no log-probs"
        else:
            arrays = _logprob_arrays(positions, teacher.options.logprobs)
            if arrays is None:
                detail["logprobs_missing"] = "the server returned token strings, not ids (vLLM: return_tokens_as_token_ids)"
            else:
                result.token_ids, result.token_logprob, result.topk_ids, result.topk_logprobs = arrays
    result.detail = detail
    return result


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, teacher: Teacher):
        super().__init__(teacher)
        self._api_key: str | None = None
        self.where = f"teacher {teacher.name} at {teacher.public_url()}"

    def setup(self) -> None:
        """Check the server and the key once, and record what model it serves."""
        self._api_key = api_key_of(self.teacher)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        url = f"{self.teacher.base_url}/models"
        try:
            response = httpx.get(url, headers=headers, timeout=min(self.teacher.options.timeout_s, 60.0))
        except httpx.HTTPError as exc:
            raise GenerationError(f"{self.where}: cannot reach the server ({type(exc).__name__}: {exc})") from None
        if response.status_code in (401, 403):
            raise GenerationError(self._auth_message(response.status_code))
        if response.status_code >= 400:
            # Some servers have no /models; generation requests will tell the rest.
            self.provenance["models_endpoint"] = f"HTTP {response.status_code}"
            return
        try:
            models = response.json().get("data") or []
        except ValueError:
            models = []
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == self.teacher.model), None)
        if models and entry is None:
            served = ", ".join(str(m.get("id")) for m in models[:10] if isinstance(m, dict))
            raise GenerationError(f"{self.where}: the server does not serve model {self.teacher.model!r} (it serves: {served})")
        if entry:
            root = entry.get("root")
            self.provenance.update({k: entry[k] for k in ("root", "owned_by", "max_model_len") if entry.get(k) is not None})
            if self.revision is None:
                self.revision = str(root) if root and root != self.teacher.model else self.teacher.model

    def _auth_message(self, status: int) -> str:
        env = self.teacher.options.api_key_env
        hint = (f"check the key in the environment variable {env}" if env
                else "the server wants a key: set api_key_env to the environment variable that holds it")
        return f"{self.where}: authentication failed (HTTP {status}); {hint}"

    def run(self, requests: Sequence[GenRequest], on_result: OnResult) -> None:
        run_async(self.arun(requests, on_result))

    async def arun(self, requests: Sequence[GenRequest], on_result: OnResult) -> None:
        if not requests:
            return
        o = self.teacher.options
        if self._api_key is None and o.api_key_env:
            self._api_key = api_key_of(self.teacher)
        client = JsonClient(
            self.teacher.base_url or "", api_key=self._api_key, timeout_s=o.timeout_s, max_in_flight=o.max_in_flight,
            retry=RetryPolicy(o.max_retries, o.backoff_s, o.max_backoff_s),
            limiter=RateLimiter(o.requests_per_minute, o.tokens_per_minute), where=self.where,
        )
        path = "/chat/completions" if o.chat else "/completions"
        pending = iter(requests)

        async def worker() -> None:
            for request in pending:  # a shared iterator: each request is taken by one worker
                on_result(await self._one(client, path, request))

        workers = [asyncio.create_task(worker()) for _ in range(min(o.max_in_flight, len(requests)))]
        try:
            await asyncio.gather(*workers)
        except FatalHTTPError as exc:
            raise GenerationError(self._fatal_text(str(exc))) from None
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await client.aclose()

    def _fatal_text(self, message: str) -> str:
        if "authentication failed" in message:
            env = self.teacher.options.api_key_env
            return message.replace("the environment variable named by api_key_env",
                                   f"the environment variable {env}" if env else "api_key_env (none is set)")
        return message

    async def _one(self, client: JsonClient, path: str, request: GenRequest) -> GenResult:
        try:
            data, latency, attempts = await client.post(path, request_body(self.teacher, request))
        except RequestFailed as exc:
            return GenResult.failed(request, exc.reason, attempts=exc.attempts,
                                    detail={"status": exc.status} if exc.status else None)
        result = parse_response(self.teacher, request, data)
        result.latency_s, result.attempts = latency, attempts
        client.limiter.record((result.prompt_tokens or 0) + (result.completion_tokens or 0))
        return result
