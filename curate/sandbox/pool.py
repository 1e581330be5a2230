"""A bounded pool running many programs at once, each in its own warm sandbox.

Host threads only wait on pipes (the work happens in the sandboxes), so a thread per concurrent
sandbox is enough. Nothing a program does can raise out of `run_many`: every outcome is a
`ProgramRun`. Infrastructure failures (a sandbox that does not start, a runner that stops
answering) are retried on a fresh sandbox from the case where they happened; when they persist
the run is a `sandbox_error`, never a wrong answer. A runner that dies *while a case runs* and
dies again on the same case in a fresh sandbox was killed by the program (it signalled its
parent, say): that case counts as a runtime error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from curate.sandbox.launch import UidPool, choose_launcher, interpreter, kill_uid, processes_of_current_user
from curate.sandbox.limits import Limits
from curate.sandbox.warm import RunnerDied, SandboxFailure, WarmSandbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One test case: stdin for stdin/stdout tests; test code for call-style tests."""

    stdin: str = ""
    test_setup: str = ""
    test: str = ""
    entry: str | None = None


@dataclass
class ProgramJob:
    program: str
    mode: str  # "stdio": run as a script per case; "call": load, then run test code per case;
    # "exec": compile a native program (`language`) once, run the executable per case
    cases: Sequence[Case]
    prelude: str | None = None
    # Called on each case's raw result; True when the case passed. Stops the program's run at
    # the first failure when `stop_on_failure`.
    judge: Callable[[int, dict[str, Any]], bool] = lambda _i, r: r.get("exit_code") == 0
    stop_on_failure: bool = True
    # For reports only: (input, expected) as a verifier shows them for each case.
    shown: Sequence[tuple[str | None, str | None]] = ()
    language: str = "python"


@dataclass
class ProgramRun:
    level: str
    results: list[dict[str, Any]] = field(default_factory=list)  # raw case results, in order
    passed: list[bool] = field(default_factory=list)
    compile_error: str | None = None
    sandbox_error: str | None = None
    budget_exceeded: bool = False  # stopped because all cases together ran past program_timeout_s
    attempts: int = 1


class SandboxPool:
    def __init__(self, *, limits: Limits | None = None, isolation: str = "auto", workers: int | None = None,
                 retries: int = 2, python: str | None = None, batch_cases: int = 16):
        self.limits = limits or Limits()
        self.python = interpreter(python)
        self.launcher = choose_launcher(isolation, self.python)
        # Two sandboxes per core by default: a case hands off host -> runner -> child and back,
        # and a second sandbox fills the CPU while the first waits (measured: 4.6x -> 7.8x the
        # baseline on 2 cores, bench/sandbox_bench.py).
        self.workers = max(1, workers or 2 * (os.cpu_count() or 1))
        self.retries = retries
        # Cases sent to a runner per round trip. Larger batches mean fewer hand-offs; a failure
        # found by comparison on the host wastes at most the rest of its batch.
        self.batch_cases = max(1, batch_cases)
        self.uids = UidPool(self.workers)
        # Without uids of their own, sandboxes share the user's process count (see UidPool).
        self.nproc = self.limits.nproc if self.uids.enabled else (
            processes_of_current_user() + self.limits.nproc * (self.workers + 1))
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")

    @property
    def level(self) -> str:
        return self.launcher.level

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_many(self, jobs: Sequence[ProgramJob]) -> Iterator[ProgramRun]:
        """Results in job order; at most `workers` sandboxes alive at once."""
        futures = [self._executor.submit(self.run_one, job) for job in jobs]
        for future in futures:
            yield future.result()

    def run_one(self, job: ProgramJob) -> ProgramRun:
        try:
            return self._run(job)
        except Exception as exc:  # the pool never crashes on a program
            log.exception("sandbox run failed")
            return ProgramRun(level=self.level, sandbox_error=f"{type(exc).__name__}: {exc}")

    def _run(self, job: ProgramJob) -> ProgramRun:
        run = ProgramRun(level=self.level, attempts=0)
        died_on: dict[int, int] = {}
        spent = 0.0
        last_error = ""
        while run.attempts <= self.retries:
            run.attempts += 1
            uid = self.uids.acquire()
            try:
                with WarmSandbox(self.launcher, self.limits, self.python, uid, self.nproc) as sandbox:
                    error = sandbox.load(job.program, job.mode, job.prelude, language=job.language)
                    if error is not None:
                        run.compile_error = error
                        return run
                    while len(run.results) < len(job.cases):
                        if spent >= self.limits.program_timeout_s:
                            run.budget_exceeded = True
                            return run
                        start = len(run.results)
                        # After a runner died mid-batch, go case by case to pin down the culprit.
                        size = 1 if died_on else self.batch_cases
                        chunk = job.cases[start:start + size]
                        results = sandbox.run_cases([vars(c) for c in chunk], first_index=start)
                        for offset, result in enumerate(results):
                            index = start + offset
                            spent += float(result.get("wall_s") or 0.0)
                            ok = bool(job.judge(index, result))
                            run.results.append(result)
                            run.passed.append(ok)
                            if not ok and job.stop_on_failure:
                                return run
                    return run
            except RunnerDied as exc:
                last_error = str(exc)
                if exc.case is not None:
                    died_on[exc.case] = died_on.get(exc.case, 0) + 1
                    if died_on[exc.case] >= 2:
                        # Reproducible: the program takes its runner down (kill(getppid()), ...).
                        run.results.append(_killed_runner_result(last_error))
                        run.passed.append(False)
                        if job.stop_on_failure or len(run.results) >= len(job.cases):
                            return run
            except SandboxFailure as exc:
                last_error = str(exc)
            finally:
                if uid is not None and self.launcher.level == "rlimits":
                    kill_uid(uid)  # no PID namespace took the stragglers down with the sandbox
                self.uids.release(uid)
            log.warning("sandbox attempt %d failed: %s", run.attempts, last_error)
        run.sandbox_error = last_error or "sandbox failed"
        return run


def _killed_runner_result(detail: str) -> dict[str, Any]:
    return {
        "exit_code": None, "signal": None, "timed_out": False, "stdout": "", "stdout_bytes": 0,
        "output_limit": False, "completed": False, "exc": None, "exc_stage": None,
        "stderr": "the program killed the sandbox's test runner (reproduced in a fresh sandbox); " + detail[:500],
        "killed_runner": True, "wall_s": 0.0, "cpu_s": None,
    }
