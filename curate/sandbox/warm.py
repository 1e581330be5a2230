"""Host side of one warm sandbox: start the runner in its isolation level, load a program, run
test cases one by one over a length-prefixed JSON pipe, and kill everything at the end.

Anything that goes wrong with the sandbox itself (it fails to start, stops answering, answers
garbage, dies) raises `SandboxFailure`; `RunnerDied.case` says whether a test case was running
at the time, which is how the pool tells a program that killed its runner from a broken machine.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from typing import Any

from curate.sandbox.launch import RUNNER_SOURCE, Launch
from curate.sandbox.limits import Limits

START_TIMEOUT_S = 30.0
# Host-side slack on top of a case's own timeout before the runner counts as unresponsive
# (the runner enforces the case's timeout itself; this covers a runner that was stopped).
GRACE_S = 10.0


class SandboxFailure(RuntimeError):
    """Infrastructure failure: retried by the pool, never scored as a wrong answer."""


class RunnerDied(SandboxFailure):
    def __init__(self, message: str, case: int | None):
        super().__init__(message)
        self.case = case


class WarmSandbox:
    def __init__(self, launcher, limits: Limits, python: str, uid: int | None, nproc: int):
        self.launcher = launcher
        self.limits = limits
        self.python = python
        self.uid = uid
        self.nproc = nproc
        self.proc: subprocess.Popen | None = None
        self.launch: Launch | None = None
        self._err_file = None
        self._cases = 0

    @property
    def level(self) -> str:
        return self.launcher.level

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        # argv[1] (the runner config) needs the launch's workdir: build once to learn it, then
        # append the config.
        launch = self.launcher.build(self.python, ["-I", "-S", "-c", RUNNER_SOURCE], self.uid, self.limits)
        launch.argv.append(launch.runner_config(self.limits, self.nproc))
        self.launch = launch
        self._err_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sandbox
        try:
            self.proc = subprocess.Popen(
                launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err_file,
                env=launch.env, user=launch.user, group=launch.user,
                extra_groups=[] if launch.user is not None else None,
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise SandboxFailure(f"cannot start the {self.level} sandbox: {exc}") from exc
        ready = self._recv(START_TIMEOUT_S, case=None)
        if not ready.get("ready"):
            raise SandboxFailure(f"sandbox runner did not start: {ready}")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        if self._err_file is not None:
            self._err_file.close()
            self._err_file = None
        if self.launch is not None and self.launch.host_dir:
            shutil.rmtree(self.launch.host_dir, ignore_errors=True)

    def __enter__(self) -> WarmSandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------------------
    def load(self, program: str, mode: str, prelude: str | None = None, language: str = "python") -> str | None:
        """Compile ``program`` inside the sandbox; returns the compile error, or None. Mode
        "exec" compiles a native ``language`` (C++) and runs the executable per case."""
        message = {"op": "load", "program": program, "mode": mode, "prelude": prelude}
        timeout = START_TIMEOUT_S
        if mode == "exec":
            from curate.sandbox.native import compile_message

            message.update(compile_message(language), compile_timeout=self.limits.compile_timeout_s,
                           compile_memory_bytes=int(self.limits.compile_memory_mb) * 2**20)
            timeout = self.limits.compile_timeout_s + GRACE_S
        self._send(message)
        reply = self._recv(timeout, case=None)
        if "ok" not in reply:
            raise SandboxFailure(f"sandbox could not load the program: {reply.get('error', reply)}")
        return None if reply["ok"] else str(reply.get("error", "compile error"))

    def run_case(self, *, stdin: str = "", test_setup: str = "", test: str = "", entry: str | None = None,
                 timeout_s: float | None = None, index: int = 0) -> dict[str, Any]:
        timeout = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        self._send({"op": "case", "stdin": stdin, "test_setup": test_setup, "test": test, "entry": entry,
                    "timeout": timeout})
        reply = self._recv(timeout + GRACE_S, case=index)
        if "error" in reply:
            raise SandboxFailure(f"runner error: {reply['error']}")
        if reply.get("harness_error"):
            raise SandboxFailure(f"test harness failed in the sandbox: {reply['harness_error']}")
        self._cases += 1
        return reply

    def run_cases(self, cases: list[dict[str, Any]], *, first_index: int = 0) -> list[dict[str, Any]]:
        """Several cases (dicts of run_case's keywords) in one round trip. The runner stops at the
        first failure that needs no comparison, so fewer results than cases may come back."""
        timeout = float(self.limits.timeout_s)
        self._send({"op": "batch", "cases": [{"stdin": c.get("stdin", ""), "test_setup": c.get("test_setup", ""),
                                               "test": c.get("test", ""), "entry": c.get("entry"),
                                               "timeout": timeout} for c in cases]})
        budget = min(timeout * len(cases), self.limits.program_timeout_s + timeout)
        reply = self._recv(budget + GRACE_S, case=first_index)
        if "error" in reply:
            raise SandboxFailure(f"runner error: {reply['error']}")
        results = reply.get("results")
        if not isinstance(results, list) or not results or len(results) > len(cases):
            raise SandboxFailure(f"bad batch reply: {str(reply)[:200]}")
        for result in results:
            if result.get("harness_error"):
                raise SandboxFailure(f"test harness failed in the sandbox: {result['harness_error']}")
        self._cases += len(results)
        return results

    def _send(self, obj: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = marshal.dumps(obj)
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise RunnerDied(f"sandbox runner gone: {exc}; {self._stderr_tail()}", None) from exc

    def _read(self, n: int, deadline: float, case: int | None) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunnerDied(f"sandbox runner unresponsive; {self._stderr_tail()}", case)
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                code = self.proc.poll()
                raise RunnerDied(f"sandbox runner exited ({code}); {self._stderr_tail()}", case)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _recv(self, timeout: float, case: int | None) -> dict:
        deadline = time.monotonic() + timeout
        (size,) = struct.unpack(">I", self._read(4, deadline, case))
        if size > 1 << 30:
            raise SandboxFailure(f"implausible reply size {size}")
        try:
            return json.loads(self._read(size, deadline, case).decode("utf-8"))
        except ValueError as exc:
            raise SandboxFailure(f"unreadable reply from the runner: {exc}") from exc

    def _stderr_tail(self) -> str:
        if self._err_file is None:
            return ""
        try:
            self._err_file.seek(0, os.SEEK_END)
            size = self._err_file.tell()
            self._err_file.seek(max(0, size - 800))
            text = self._err_file.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"runner stderr: {text}" if text else "runner stderr empty"
