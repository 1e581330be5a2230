"""Hostile programs: each must be contained, scored as failing, and leave the machine and the run
unharmed. Run at every isolation level this machine has (bubblewrap; the unshare/setuid fallback;
the rlimits-only level for what it can contain)."""

from __future__ import annotations

import json
import os
import socket
import threading

import psutil
import pyarrow as pa
import pytest

from curate.sandbox.launch import SandboxUnavailable, choose_launcher
from curate.testing import run_stage_in_memory
from curate.verifiers.code import CodeVerifyConfig, CodeVerifyStage

LEVELS = ("bwrap", "unshare", "rlimits")


def _tests(expected: str, stdin: str = "") -> str:
    return json.dumps({"format": "stdin_stdout", "cases": [{"input": stdin, "output": expected}]})


def _answer(code: str) -> str:
    return f"Solution:\n```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback: a sandboxed program must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


def _hostile_rows(level: str, port: int, host_dir: str) -> list[tuple[str, str, str, set[str]]]:
    """(name, program, tests, verdicts that count as contained-and-failing)."""
    kill_all = "os.kill(-1, 9)\n" if (level != "rlimits" or os.geteuid() == 0) else ""
    rows = [
        ("fork_bomb", "import os\nwhile True:\n    os.fork()\n", _tests("42"), {"runtime_error", "timeout"}),
        ("memory_hog", "x = bytearray(8 * 2**30)\nprint(len(x))\n", _tests("8589934592"), {"memory"}),
        ("memory_hog_list", "x = []\nwhile True:\n    x.append(' ' * 2**20)\n", _tests("42"), {"memory"}),
        ("infinite_loop", "while True:\n    pass\n", _tests("42"), {"timeout"}),
        ("sleep_forever", "import time\ntime.sleep(3600)\n", _tests("42"), {"timeout"}),
        ("huge_output", "while True:\n    print('x' * 10000)\n", _tests("42"), {"runtime_error"}),
        ("env_secret", "import os\nprint(os.environ.get('CURATE_TEST_SECRET', 'none'))\n",
         _tests("hunter2"), {"wrong_answer"}),
        ("kill_parent", "import os, time\nos.kill(os.getppid(), 9)\n" + kill_all + "time.sleep(0.2)\n",
         _tests("42"), {"wrong_answer", "runtime_error"}),
        ("sys_exit_hack", "import sys\nsys.exit(0)\n", _tests("42"), {"wrong_answer"}),
        ("os_exit_hack", "import os\nos._exit(0)\n", _tests("42"), {"wrong_answer"}),
        ("prints_expected_for_sample_only", "print(42)\n",
         json.dumps({"format": "stdin_stdout", "cases": [{"input": "", "output": "42"},
                                                          {"input": "1", "output": "43"}]}), {"wrong_answer"}),
    ]
    if level != "rlimits":  # no network or file-system isolation at the weakest level
        targets = (os.path.join(host_dir, "pwned"), "/usr/pwned", os.path.join(os.getcwd(), "pwned"), "/etc/pwned")
        rows += [
            ("network", "import socket\ntry:\n    socket.create_connection(('127.0.0.1', " + str(port) +
                        "), timeout=3)\n    print('connected')\nexcept OSError:\n    print('blocked')\n",
             _tests("connected"), {"wrong_answer"}),
            ("write_outside", f"import os\nwrote = 0\nfor path in ({targets!r}):\n"
                              "    try:\n        open(path, 'w').write('x')\n        wrote += 1\n"
                              "    except OSError:\n        pass\nprint(wrote)\n", _tests("4"), {"wrong_answer"}),
        ]
    # The run goes on: a correct program after all of the above still passes.
    rows.append(("sentinel", "print(int(input()) * 2)\n", _tests("42\n", "21\n"), {"pass"}))
    return rows


@pytest.mark.parametrize("level", LEVELS)
def test_hostile_programs_are_contained_and_fail(level, listener, tmp_path, monkeypatch):
    try:
        choose_launcher(level)
    except SandboxUnavailable as exc:
        pytest.skip(f"isolation level {level} unavailable here: {exc}")
    port, accepted = listener
    monkeypatch.setenv("CURATE_TEST_SECRET", "hunter2")
    os.chmod(tmp_path, 0o777)  # writable to the sandbox uid too, so only isolation can stop a write
    # Processes other tests left running (multiprocessing's resource tracker) are not ours to judge.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rows = _hostile_rows(level, port, str(tmp_path))
    table = pa.table({"answer": [_answer(code) for _, code, _, _ in rows], "tests": [t for _, _, t, _ in rows]})
    stage = CodeVerifyStage(CodeVerifyConfig(isolation=level, timeout_s=1.5, memory_mb=256, output_mb=1,
                                             nproc=32, workers=2, retries=1))
    out = run_stage_in_memory(stage, table).table
    verdicts = out.column("code__verdict").to_pylist()
    got = {name: verdict for (name, *_), verdict in zip(rows, verdicts, strict=True)}
    bad = {name: (got[name], allowed) for name, _, _, allowed in rows if got[name] not in allowed}
    assert not bad, f"{level}: {bad}"
    assert set(out.column("code__isolation").to_pylist()) == {level}
    # Nothing leaked out of the sandboxes.
    assert accepted == []
    assert not (tmp_path / "pwned").exists() and not os.path.exists(os.path.join(os.getcwd(), "pwned"))
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/etc/pwned")
    failures = {name: json.loads(f) for (name, *_), f in zip(rows, out.column("code__first_failure").to_pylist(),
                                                              strict=True) if f}
    assert failures["huge_output"]["reason"] == "output limit exceeded"
    assert failures["env_secret"]["got"] == "none\n"
    # The machine is unharmed: no sandbox process survives its program.
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in before] == []


def test_fallback_level_is_used_when_forced():
    """`isolation: unshare` forces the fallback even where bwrap works, and the output says so."""
    try:
        choose_launcher("unshare")
    except SandboxUnavailable as exc:
        pytest.skip(f"unshare fallback unavailable here: {exc}")
    table = pa.table({"answer": [_answer("import os\nprint(os.getuid() != 0)\n")], "tests": [_tests("True")]})
    out = run_stage_in_memory(CodeVerifyStage(CodeVerifyConfig(isolation="unshare", workers=1)), table).table
    assert out.column("code__isolation").to_pylist() == ["unshare"]
    assert out.column("code__verdict").to_pylist() == ["pass"]


def test_unknown_or_unavailable_level_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown isolation level"):
        choose_launcher("chroot")
