"""A small async JSON client for inference servers: retries with backoff, rate limits, fatal errors.

Transport only: it knows HTTP status codes, not OpenAI's payloads (backend_openai.py does).

* 429, 5xx, 408, timeouts and dropped connections are retried with exponential backoff and
  jitter, honouring ``Retry-After``; after ``max_retries`` the caller gets a `RequestFailed`
  with the last reason, which becomes an error row, not a gap.
* 401 / 403 (bad or missing key) and 404 (wrong URL or model) are `FatalHTTPError`: every other
  request would fail the same way, so the run stops with a message saying what to fix.
* other 4xx (a prompt longer than the context, a parameter the server refuses) fail that one
  request at once: retrying cannot help.

The transport is aiohttp: httpx's connection pool serialises badly under many concurrent
requests (measured here: 235 requests/s on one connection, 94 with 64 in flight, against an
instant server), far from the 2,000 requests/s a fleet of inference servers can take.

The API key is only ever in the Authorization header; no message built here contains it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
FATAL_STATUS = frozenset({401, 403, 404})


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (about twice the requests/s of the default
    loop for many small HTTP requests; `bench/http_bench.py`), else on the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class FatalHTTPError(RuntimeError):
    """The server refuses every request (authentication, unknown model or URL)."""


def api_key_from_env(env: str | None, owner: str, error: type[Exception]) -> str | None:
    """The API key held by the environment variable `env` (None when no variable is named). Keys
    are only ever read from the environment, so no config, manifest or log can hold one."""
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise error(f"{owner}: environment variable {env} (api_key_env) is not set")
    return value


@dataclass
class RequestFailed(Exception):
    reason: str
    attempts: int
    status: int | None = None

    def __str__(self) -> str:
        return self.reason


class RateLimiter:
    """Requests-per-minute pacing (evenly spaced starts) and a tokens-per-minute sliding window
    charged with the real usage of finished requests (a request's size is unknown before)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.tokens_per_minute = tokens_per_minute
        self._next_start = 0.0
        self._window: deque[tuple[float, int]] = deque()
        self._window_tokens = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.interval and not self.tokens_per_minute:
            return
        async with self._lock:
            while self.tokens_per_minute and self._used(time.monotonic()) >= self.tokens_per_minute:
                oldest = self._window[0][0]
                await asyncio.sleep(max(0.01, oldest + 60.0 - time.monotonic()))
            if self.interval:
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + self.interval
                if start > now:
                    await asyncio.sleep(start - now)

    def record(self, tokens: int) -> None:
        if self.tokens_per_minute and tokens:
            self._window.append((time.monotonic(), tokens))
            self._window_tokens += tokens

    def _used(self, now: float) -> int:
        while self._window and self._window[0][0] <= now - 60.0:
            self._window_tokens -= self._window.popleft()[1]
        return self._window_tokens


@dataclass
class RetryPolicy:
    max_retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        base = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        return base * random.uniform(0.5, 1.0)


def _server_message(payload: bytes) -> str:
    """The error text a server put in its body (OpenAI style or plain), shortened."""
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return payload[:300].decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:300]
        if isinstance(body.get("message"), str):
            return body["message"][:300]
        return str(error)[:300]
    return str(body)[:300]


class JsonClient:
    """POST JSON with retries; one per teacher, created inside the event loop that uses it."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float, max_in_flight: int,
                 retry: RetryPolicy, limiter: RateLimiter, where: str):
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.where = where  # "teacher NAME at URL" for messages
        self.retry = retry
        self.limiter = limiter
        self.http = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 30.0)),
            connector=aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=max_in_flight),
            # Responses are parsed by us; no cookie jar to grow over millions of requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        await self.http.close()

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], float, int]:
        """(response JSON, latency of the successful attempt, attempts)."""
        url = self.base_url + path
        body = json.dumps(payload, ensure_ascii=False).encode()
        last_reason, last_status = "", None
        for attempt in range(self.retry.max_retries + 1):
            await self.limiter.acquire()
            started = time.perf_counter()
            retry_after = None
            try:
                async with self.http.post(url, data=body) as response:
                    status = response.status
                    content = await response.read()
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError as exc:
                last_reason, last_status = f"timeout ({type(exc).__name__})", None
            except aiohttp.ClientError as exc:
                last_reason, last_status = f"connection error ({type(exc).__name__}: {exc})", None
            else:
                latency = time.perf_counter() - started
                if status < 300:
                    try:
                        return json.loads(content), latency, attempt + 1
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        last_reason, last_status = "invalid JSON in a 2xx response", status
                elif status in FATAL_STATUS:
                    raise FatalHTTPError(self._fatal_message(status, _server_message(content)))
                elif status in RETRY_STATUS:
                    last_reason, last_status = f"HTTP {status}: {_server_message(content)}", status
                else:
                    raise RequestFailed(f"HTTP {status}: {_server_message(content)}", attempt + 1, status)
            if attempt < self.retry.max_retries:
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise RequestFailed(
            f"{last_reason} (gave up after {self.retry.max_retries + 1} attempts)",
            self.retry.max_retries + 1, last_status,
        )

    def _fatal_message(self, status: int, message: str) -> str:
        if status in (401, 403):
            return (f"{self.where}: authentication failed (HTTP {status}: {message}). Check the API key in the "
                    "environment variable named by api_key_env.")
        return f"{self.where}: HTTP 404 ({message}). Check the base URL (it usually ends in /v1) and the model name."
