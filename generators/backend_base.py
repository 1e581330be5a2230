"""What every generation backend takes and gives back.

A `GenRequest` is one sample: (problem, teacher, sample index, seed) plus the prompt. Backends
answer each with one `GenResult` through a callback *as it completes* (never all at the end), so
the stage can append it to its scratch log at once and a killed run loses nothing it was told.

Token log-probs travel as numpy arrays: ``token_ids`` [n] (the sampled completion tokens),
``token_logprob`` [n] (their log-probs) and ``topk_ids`` / ``topk_logprobs`` [n, k] (rank 0 the
most likely), the layout of the trainer's topk-v1 cache (curate/trainer/topk_format.py).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curate.generators.teachers import Teacher

# topk-v1 needs exactly k entries per position; a server that returns fewer (rare: tokens tied
# at -inf) is padded with this id and the smallest float16, i.e. probability 0.
PAD_TOPK_ID = 0
PAD_LOGPROB = float(np.finfo(np.float16).min)


class GenerationError(RuntimeError):
    """A teacher cannot be used at all (bad API key, unknown model, engine failed to load):
    stop the run with a clear message instead of writing one error row per request."""


@dataclass(slots=True)
class GenRequest:
    row: int  # position of the problem in the batch (joins the result back to its problem)
    problem_id: str
    sample_index: int
    seed: int
    messages: list[dict[str, str]] | None  # chat mode
    prompt: str | None  # raw mode

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.problem_id, self.sample_index, self.seed)


@dataclass(slots=True)
class GenResult:
    problem_id: str
    sample_index: int
    seed: int
    text: str | None = None
    reasoning_content: str | None = None  # servers that return the thinking apart
    finish_reason: str | None = None  # raw, as the backend said it
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    created_at: float = field(default_factory=time.time)
    error: str | None = None
    attempts: int = 1
    detail: dict[str, Any] = field(default_factory=dict)  # backend extras for trace_metadata
    token_ids: np.ndarray | None = None
    token_logprob: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.problem_id, self.sample_index, self.seed)

    @classmethod
    def failed(cls, request: GenRequest, error: str, *, latency_s: float | None = None, attempts: int = 1,
               detail: dict[str, Any] | None = None) -> GenResult:
        return cls(request.problem_id, request.sample_index, request.seed, finish_reason="error", error=error,
                   latency_s=latency_s, attempts=attempts, detail=detail or {})

    # -- the scratch log's JSON form -----------------------------------------------------
    def to_record(self, teacher: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "teacher": teacher, "problem_id": self.problem_id, "sample_index": self.sample_index,
            "seed": self.seed, "text": self.text, "reasoning_content": self.reasoning_content,
            "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "latency_s": self.latency_s,
            "created_at": self.created_at, "error": self.error, "attempts": self.attempts,
            "detail": self.detail,
        }
        if self.topk_ids is not None:
            record["logprobs"] = {
                "k": int(self.topk_ids.shape[1]),
                "token_ids": _b64(self.token_ids, np.int32),
                "token_logprob": _b64(self.token_logprob, np.float32),
                "topk_ids": _b64(self.topk_ids, np.int32),
                "topk_logprobs": _b64(self.topk_logprobs, np.float32),
            }
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GenResult:
        result = cls(
            record["problem_id"], record["sample_index"], record["seed"], record.get("text"),
            record.get("reasoning_content"), record.get("finish_reason"), record.get("prompt_tokens"),
            record.get("completion_tokens"), record.get("latency_s"), record.get("created_at", 0.0),
            record.get("error"), record.get("attempts", 1), record.get("detail") or {},
        )
        lp = record.get("logprobs")
        if lp:
            k = lp["k"]
            result.token_ids = _unb64(lp["token_ids"], np.int32)
            result.token_logprob = _unb64(lp["token_logprob"], np.float32)
            result.topk_ids = _unb64(lp["topk_ids"], np.int32).reshape(-1, k)
            result.topk_logprobs = _unb64(lp["topk_logprobs"], np.float32).reshape(-1, k)
        return result


def _b64(values: np.ndarray | None, dtype: type) -> str:
    return base64.b64encode(np.ascontiguousarray(values if values is not None else [], dtype=dtype).tobytes()).decode()


def _unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def topk_arrays(positions: Sequence[Sequence[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (id, logprob) candidates -> [n, k] ids and log-probs sorted by log-prob
    (rank 0 first), padded to exactly k."""
    n = len(positions)
    ids = np.full((n, k), PAD_TOPK_ID, dtype=np.int32)
    logprobs = np.full((n, k), PAD_LOGPROB, dtype=np.float32)
    for i, candidates in enumerate(positions):
        best = sorted(candidates, key=lambda c: -c[1])[:k]
        for j, (token, value) in enumerate(best):
            ids[i, j] = token
            logprobs[i, j] = max(value, PAD_LOGPROB)
    return ids, logprobs


OnResult = Callable[[GenResult], None]


class Backend:
    """One teacher's engine or client. `setup` loads or checks it (raising `GenerationError`
    when it cannot work at all), `run` answers every request through ``on_result``."""

    kind: str = ""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.revision: str | None = teacher.revision
        # Extra provenance for trace_metadata (server model root, engine version, device).
        self.provenance: dict[str, Any] = {}

    def setup(self) -> None:
        pass

    def run(self, requests: Sequence[GenRequest], on_result: OnResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def build_prompt(teacher: Teacher, prompt: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) in chat mode, (None, text) in raw mode."""
    user = teacher.template.replace("{prompt}", prompt)
    system = teacher.options.system_prompt
    if teacher.options.chat:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return messages, None
    return None, (f"{system}\n\n{user}" if system else user)


def make_backend(teacher: Teacher) -> Backend:
    if teacher.kind == "openai":
        from curate.generators.backend_openai import OpenAIBackend

        return OpenAIBackend(teacher)
    if teacher.kind == "vllm":
        from curate.generators.backend_vllm import VllmBackend

        return VllmBackend(teacher)
    if teacher.kind == "hf":
        from curate.generators.backend_hf import HFBackend

        return HFBackend(teacher)
    raise GenerationError(f"unknown backend {teacher.kind!r}")
