"""The warm sandbox and its pool: infrastructure failures are retried and reported as such, a
program that kills its runner is a runtime error, forged completion records do not pass."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from curate.sandbox.launch import Launch, SandboxUnavailable, choose_launcher
from curate.sandbox.limits import Limits
from curate.sandbox.pool import Case, ProgramJob, SandboxPool
from curate.testing import run_stage_in_memory
from curate.verifiers.code import CodeVerifyConfig, CodeVerifyStage, _outcome


class _BrokenLauncher:
    """A sandbox that never starts (stands in for a broken bwrap, a full disk, ...)."""

    level = "broken"

    def build(self, python, args, uid, limits):
        return Launch(argv=["/bin/false"], level=self.level, user=None, workdir="/tmp", pidns=False)


def _pool(**kw) -> SandboxPool:
    try:
        return SandboxPool(limits=Limits(timeout_s=2), workers=2, **kw)
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))


def test_infrastructure_failure_is_retried_then_sandbox_error():
    with _pool(retries=2) as pool:
        pool.launcher = _BrokenLauncher()
        job = ProgramJob(program="print(1)", mode="stdio", cases=[Case()], shown=[("", "1")])
        run = pool.run_one(job)
    assert run.attempts == 3
    assert run.sandbox_error is not None and "exited" in run.sandbox_error
    assert run.results == [] and run.passed == []
    assert _outcome(job, {}, run)[2] == "sandbox_error"


def test_program_that_kills_its_runner_is_a_runtime_error():
    # At the rlimits level the runner is not PID 1 of a namespace, so the kill lands.
    try:
        choose_launcher("rlimits")
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    with _pool(isolation="rlimits", retries=2) as pool:
        job = ProgramJob(program="import os\nos.kill(os.getppid(), 9)\n", mode="stdio", cases=[Case()],
                         shown=[("", "1")])
        run = pool.run_one(job)
    assert run.sandbox_error is None
    assert run.passed == [False] and run.results[0]["killed_runner"] is True
    verdict, failure = _outcome(job, {}, run)[2:4]
    assert verdict == "runtime_error" and json.loads(failure)["reason"] == "killed the sandbox runner"


def test_forged_completion_record_does_not_pass():
    """The harness's result pipe is findable (fd 200), but the nonce is not: a program that writes
    a completion record itself and exits gets no pass."""
    program = ("import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'nonce\\tdeadbeef\\n')\n"
               "    except OSError:\n        pass\nos._exit(0)\n")
    tests = json.dumps({"format": "assert", "asserts": ["assert f() == 1"], "setup": ""})
    table = pa.table({"answer": [f"```python\n{program}\ndef f():\n    return 1\n```"], "tests": [tests]})
    out = run_stage_in_memory(CodeVerifyStage(CodeVerifyConfig(workers=1)), table).table
    assert out.column("code__verdict").to_pylist() == ["runtime_error"]


def test_each_case_starts_clean_and_results_keep_order():
    """Cases of one program do not share files or memory; results come back in job order."""
    program = ("import os\nprint(os.path.exists('marker'))\nopen('marker', 'w').write('x')\n"
               "import builtins\nprint(hasattr(builtins, 'leak'))\nbuiltins.leak = 1\n")
    with _pool() as pool:
        jobs = [ProgramJob(program=program, mode="stdio", cases=[Case(), Case()]),
                ProgramJob(program="print(input())", mode="stdio", cases=[Case(stdin="7\n")])]
        runs = list(pool.run_many(jobs))
    assert [r["stdout"] for r in runs[0].results] == ["False\nFalse\n", "False\nFalse\n"]
    assert runs[1].results[0]["stdout"] == "7\n"
