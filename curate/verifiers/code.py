"""`curate verify code`: run the program in each trace's answer against its problem's tests, in
a sandbox (see curate/sandbox), and record passed/total, a typed verdict, the first failing case
and the isolation level used.

Verdicts: pass, wrong_answer, runtime_error, timeout, memory, compile_error, sandbox_error
(infrastructure failure after retries: never a wrong answer), no_code (the answer has no block
in the problem's language), no_tests (the row has no usable tests), unsupported_language (no
runner for the problem's language here). Rows are never dropped. Python runs in a warm
interpreter that forks per case; C++ is compiled with g++ inside the sandbox and the executable
runs per case (stdin/stdout tests).

Reward hacks that do not pass: `sys.exit(0)` / `os._exit(0)` before the asserts (call-style
tests must echo a per-case nonce after the last assert), printing the expected output (stdin/
stdout tests compare every expected line; expected outputs never enter the sandbox), objects
with a rigged `__eq__` (asserts compare with a strict equality).
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from curate.stage import BatchResult, Resources, Stage, StageConfig
from curate.verifiers.code_extract import extract_program
from curate.verifiers.testspec import TestSpecError, call_cases, load_tests, outputs_match, program_prelude

VERDICTS = ("pass", "wrong_answer", "runtime_error", "timeout", "memory", "compile_error", "sandbox_error",
            "no_code", "no_tests", "unsupported_language")
HEAD = 1000


class CodeVerifyConfig(StageConfig):
    isolation: Literal["auto", "bwrap", "unshare", "rlimits"] = Field(
        "auto", description="Sandbox level; auto picks the strongest that works on this machine.")
    timeout_s: float = Field(5.0, description="Wall-clock limit per test case (CPU: ceil + 1 s).")
    program_timeout_s: float = Field(60.0, description="Limit for all cases of one program together.")
    memory_mb: int = Field(1024, description="Address-space limit per test case.")
    output_mb: float = Field(16.0, description="Largest stdout kept per case; more is a runtime error.")
    nproc: int = Field(64, description="Processes and threads per sandbox.")
    workers: int | None = Field(None, description="Sandboxes running at once (default: 2 per CPU).")
    retries: int = Field(2, description="Fresh-sandbox retries after an infrastructure failure.")
    float_tol: float | None = Field(None, description="Numeric tolerance for stdin/stdout outputs "
                                                      "(a problem's own float_tol wins).")
    comparison: Literal["lines", "tokens"] = Field("lines", description="Compare stdout line by line or "
                                                                         "as one token sequence.")
    stop_on_first_failure: bool = Field(True, description="Stop a program at its first failing case.")
    max_cases: int | None = Field(None, description="Run at most this many cases per problem.")
    python: str | None = Field(None, description="Interpreter inside the sandbox (default: found).")


class CodeVerifyStage(Stage[CodeVerifyConfig]):
    name = "verify_code"
    version = "2"
    config_model = CodeVerifyConfig
    description = "Run each trace's program against its problem's tests in a sandbox (bubblewrap when available)."
    example = "curate verify code runs/code --timeout-s 5 --memory-mb 1024 --isolation auto"
    cli = ("verify", "code")
    requires = ("answer", "tests")
    score_namespace = "code"
    # One worker process drives its own bounded pool of sandboxes (threads waiting on pipes).
    resources = Resources(cpus=1, max_workers=1)
    batch_rows = 256

    def __init__(self, config: CodeVerifyConfig | None = None):
        super().__init__(config)
        self._pool = None

    def output_fields(self) -> list[pa.Field]:
        return [
            pa.field(self.col("passed"), pa.int32()),
            pa.field(self.col("total"), pa.int32()),
            pa.field(self.col("verdict"), pa.string()),
            pa.field(self.col("first_failure"), pa.string()),
            pa.field(self.col("isolation"), pa.string()),
        ]

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        from curate.sandbox.limits import Limits
        from curate.sandbox.pool import SandboxPool

        cfg = self.config
        limits = Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, nproc=cfg.nproc,
                        output_mb=cfg.output_mb, fsize_mb=cfg.output_mb, program_timeout_s=cfg.program_timeout_s)
        self._pool = SandboxPool(limits=limits, isolation=cfg.isolation, workers=cfg.workers,
                                 retries=cfg.retries, python=cfg.python)

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- work ------------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> BatchResult:
        if self._pool is None:
            self.setup()
        answers = batch.column("answer").to_pylist()
        tests = batch.column("tests").to_pylist()
        n = batch.num_rows
        passed: list[int | None] = [None] * n
        total: list[int | None] = [None] * n
        verdicts: list[str] = ["no_tests"] * n
        failures: list[str | None] = [None] * n
        levels: list[str | None] = [None] * n
        counts: Counter[str] = Counter()

        specs: dict[str, dict | str] = {}  # tests text -> spec, or the reason it is unusable
        jobs: dict[str, tuple[Any, dict]] = {}  # (program, tests) digest -> (job, spec)
        rows_of: dict[str, list[int]] = {}
        for i in range(n):
            text = tests[i]
            if text is None or not str(text).strip():
                continue
            if text not in specs:
                try:
                    specs[text] = load_tests(text) or "empty tests"
                except (TestSpecError, ValueError, SyntaxError) as exc:
                    specs[text] = f"unreadable tests: {exc}"
            spec = specs[text]
            if isinstance(spec, str):
                failures[i] = json.dumps({"reason": spec[:HEAD]})
                counts["tests_invalid"] += 1
                continue
            language = spec.get("language", "python")
            unsupported = _unsupported(language, spec["format"])
            if unsupported:
                verdicts[i] = "unsupported_language"
                failures[i] = json.dumps({"reason": unsupported})
                continue
            program = extract_program(answers[i], language)
            if program is None:
                verdicts[i] = "no_code"
                continue
            key = hashlib.sha256(f"{program}\0{text}".encode()).hexdigest()
            if key not in jobs:
                try:
                    jobs[key] = (self._job(program, spec), spec)
                except (TestSpecError, SyntaxError, ValueError) as exc:
                    specs[text] = f"unreadable tests: {exc}"
                    failures[i] = json.dumps({"reason": specs[text][:HEAD]})
                    counts["tests_invalid"] += 1
                    continue
            rows_of.setdefault(key, []).append(i)
        counts["programs_run"] += len(jobs)
        counts["duplicate_programs"] += sum(len(r) for r in rows_of.values()) - len(jobs)

        keys = list(jobs)
        for key, run in zip(keys, self._pool.run_many([jobs[k][0] for k in keys]), strict=True):
            job, spec = jobs[key]
            outcome = _outcome(job, spec, run)
            for i in rows_of[key]:
                passed[i], total[i], verdicts[i], failures[i], levels[i] = outcome
        for verdict in verdicts:
            counts[f"verdict:{verdict}"] += 1
        out = batch
        for name, values, kind in (("passed", passed, pa.int32()), ("total", total, pa.int32()),
                                   ("verdict", verdicts, pa.string()), ("first_failure", failures, pa.string()),
                                   ("isolation", levels, pa.string())):
            out = out.append_column(self.col(name), pa.array(values, kind))
        return BatchResult(out, counts=counts)

    def _job(self, program: str, spec: dict):
        from curate.sandbox.pool import Case, ProgramJob

        cfg = self.config
        language = spec.get("language", "python")
        if spec["format"] == "stdin_stdout":
            cases = spec["cases"][: cfg.max_cases] if cfg.max_cases else spec["cases"]
            tol = spec.get("float_tol") if spec.get("float_tol") is not None else cfg.float_tol
            comparison = spec.get("comparison") or cfg.comparison

            def judge(index: int, result: dict) -> bool:
                return (result.get("exit_code") == 0 and not result.get("timed_out") and not result.get("output_limit")
                        and outputs_match(result.get("stdout", ""), cases[index]["output"], float_tol=tol,
                                          mode=comparison))

            return ProgramJob(program=program, mode="stdio" if language == "python" else "exec",
                              language=language, cases=[Case(stdin=c["input"]) for c in cases],
                              judge=judge, stop_on_failure=cfg.stop_on_first_failure,
                              shown=[(c["input"], c["output"]) for c in cases])
        call = call_cases(spec, program)
        if cfg.max_cases:
            call = call[: cfg.max_cases]
        return ProgramJob(program=program, mode="call", prelude=program_prelude(spec),
                          cases=[Case(test_setup=c.setup, test=c.test, entry=c.entry) for c in call],
                          judge=lambda _i, r: bool(r.get("completed")) and r.get("exit_code") == 0,
                          stop_on_failure=cfg.stop_on_first_failure, shown=[(c.shown, None) for c in call])


def _unsupported(language: str, test_format: str) -> str | None:
    """Why a problem's language cannot be run here, or None. Native languages run stdin/stdout
    tests only: check functions and assert lists are Python code."""
    from curate.sandbox.native import NoCompiler, compile_message, native_languages

    if language == "python":
        return None
    if language not in native_languages():
        return f"no runner for language {language!r} (supported: python, {', '.join(native_languages())})"
    if test_format != "stdin_stdout":
        return f"{language} programs run stdin_stdout tests only, not {test_format}"
    try:
        compile_message(language)
    except NoCompiler as exc:
        return str(exc)
    return None


# -- turning a run into columns -------------------------------------------------------------
def _head(text: str | None) -> str | None:
    return None if text is None else text[:HEAD]


def case_verdict(result: dict, mode: str) -> tuple[str, str]:
    """(verdict, reason) of one failed case's raw result."""
    sig = result.get("signal")
    if result.get("killed_runner"):
        return "runtime_error", "killed the sandbox runner"
    if result.get("timed_out") or sig == signal.SIGXCPU:
        return "timeout", "time limit exceeded"
    if result.get("exc") == "MemoryError":
        return "memory", "memory limit exceeded"
    if result.get("output_limit") or sig == signal.SIGXFSZ:
        return "runtime_error", "output limit exceeded"
    if sig is not None:
        return "runtime_error", f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    if mode == "call":
        if result.get("exc") == "AssertionError" and result.get("exc_stage") == "tests":
            return "wrong_answer", "assertion failed"
        if result.get("exc") == "SystemExit":
            return "runtime_error", "exited before the tests completed"
        if result.get("exc"):
            return "runtime_error", f"{result['exc']} raised"
        if result.get("exit_code") == 0:
            return "runtime_error", "exited before the tests completed (no completion nonce)"
        return "runtime_error", f"exit code {result.get('exit_code')}"
    if result.get("exit_code") == 0:
        return "wrong_answer", "output differs"
    return "runtime_error", f"{result['exc']} raised" if result.get("exc") else f"exit code {result.get('exit_code')}"


def _outcome(job, spec: dict, run) -> tuple[int, int, str, str | None, str]:
    total = len(job.cases)
    passed = sum(run.passed)
    if run.compile_error is not None:
        return 0, total, "compile_error", json.dumps({"reason": "compile error", "stderr": _head(run.compile_error)}), \
            run.level
    if run.sandbox_error is not None:
        return passed, total, "sandbox_error", json.dumps(
            {"reason": f"sandbox failed after {run.attempts} attempts", "stderr": _head(run.sandbox_error)}), run.level
    failed = next((i for i, ok in enumerate(run.passed) if not ok), None)
    if failed is None:
        if run.budget_exceeded or len(run.results) < total:
            return passed, total, "timeout", json.dumps({"reason": "program time budget exceeded",
                                                         "case": len(run.results)}), run.level
        return passed, total, "pass", None, run.level
    result = run.results[failed]
    verdict, reason = case_verdict(result, job.mode)
    shown_input, expected = job.shown[failed]
    failure = {"case": failed, "reason": reason, "input": _head(shown_input), "expected": _head(expected),
               "got": _head(result.get("stdout")), "stderr": _head(result.get("stderr"))}
    return passed, total, verdict, json.dumps(failure, ensure_ascii=False), run.level
