# ruff: noqa: SIM105  (contextlib would import collections/functools: slower start-up)
"""The warm runner: the one piece of trace-curate that runs INSIDE the sandbox.

It is started once per program (as `python -I -S -c <this file's text> <config JSON>`), compiles
the program once, then forks one child per test case. Forking a warm interpreter costs about a
millisecond where a fresh `python` costs tens, which is where the sandbox's throughput comes from.

The runner itself never executes model code: only its forked children do, each in its own
session (killed as a group), with per-case rlimits, stdin/stdout/stderr redirected to files in a
fresh case folder, and a private result pipe. Expected outputs never enter the sandbox; the host
compares. For call-style tests (check functions, assert lists) a child proves that the tests ran
to completion by echoing a per-case nonce that only the runner and the finished harness know, so
`sys.exit(0)` / `os._exit(0)` before the asserts cannot pass.

Standard library only, no curate imports: the sandbox sees no site-packages.

Wire format: 4-byte big-endian length, then the message: `marshal` from the host (trusted
data, and marshal is built in: importing `json` would pull in `re`, `enum` and `collections`,
tripling the interpreter's start-up time), UTF-8 JSON back to the host (which parses it safely;
the small encoder below covers the reply types). Children report to the runner in tab-separated
lines, not JSON, for the same reason.
"""

import marshal
import os
import resource
import select
import struct
import sys
import time

SIGKILL = 9  # not `signal.SIGKILL`: the signal module imports enum (slow start-up)
CONFIG: dict = {}
CTL_IN = CTL_OUT = -1
WORK = ""
HEAD = 2000


def _set_limit(which, value):
    if value is None:
        return
    try:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass


def _setup_runner():
    global CONFIG, CTL_IN, CTL_OUT, WORK, HEAD
    CONFIG = marshal.loads(bytes.fromhex(sys.argv[1]))
    WORK = CONFIG["workdir"]
    HEAD = CONFIG.get("stderr_head", 2000)
    CTL_IN = os.dup(0)
    CTL_OUT = os.dup(1)
    # Only the protocol uses the original descriptors; fd 0/1 now point at /dev/null so no stray
    # print in the runner can corrupt the wire.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    os.makedirs(WORK, exist_ok=True)
    os.chdir(WORK)
    # Process count is per real uid: set here, it bounds every child and grandchild (fork bombs).
    _set_limit(resource.RLIMIT_NPROC, CONFIG.get("nproc"))
    _set_limit(resource.RLIMIT_CORE, 0)
    # Non-dumpable: a same-uid child can neither ptrace the runner nor open its /proc/<pid>/fd
    # (where the result pipe lives). Children inherit it (they fork without exec).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


# -- wire -------------------------------------------------------------------------------------
def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv():
    (size,) = struct.unpack(">I", _read_exact(CTL_IN, 4))
    return marshal.loads(_read_exact(CTL_IN, size))


_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"'})


def to_json(value):
    """JSON text of None/bool/int/float/str/list/dict (the reply types)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, str):
        # Lone surrogates (from undecodable bytes) cannot be UTF-8 encoded: escape them.
        text = value.translate(_ESCAPES)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return '"' + text + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(to_json(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    return to_json(str(value))


def send(obj):
    data = to_json(obj).encode("utf-8")
    payload = struct.pack(">I", len(data)) + data
    view = memoryview(payload)
    while view:
        view = view[os.write(CTL_OUT, view):]


# -- strict equality for call-style tests ---------------------------------------------------
_PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_PLAIN_CONTAINERS = (list, tuple, set, frozenset)


def _plain(value, _type=type, _all=all, _isinstance=isinstance, depth=0):
    """True when ``value`` is built only of builtin types (exact types, not subclasses)."""
    kind = _type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if depth > 50:
        return False
    if kind in _PLAIN_CONTAINERS:
        return _all(_plain(v, depth=depth + 1) for v in value)
    if kind is dict:
        return _all(_plain(k, depth=depth + 1) and _plain(v, depth=depth + 1) for k, v in value.items())
    return False


def curate_eq(got, expected, _plain=_plain):
    """`got == expected`, except that an object with a rigged __eq__ (the "AlwaysEqual" hack,
    an int subclass that equals everything) never equals a plain expected value."""
    if _plain(expected) and not _plain(got):
        return False
    return bool(got == expected)


# -- one test case ------------------------------------------------------------------------
def _child(case, case_dir, res_w, program):
    """Runs in the forked child: never returns."""
    exit_code = 0
    res_fd = res_w
    try:
        os.setsid()
        limits = CONFIG["limits"]
        cpu = int(case["timeout"]) + 1
        _set_limit(resource.RLIMIT_CPU, cpu)
        _set_limit(resource.RLIMIT_AS, limits.get("memory_bytes"))
        _set_limit(resource.RLIMIT_FSIZE, limits.get("fsize_bytes"))
        os.chdir(case_dir)
        stdin_fd = os.open("stdin", os.O_RDONLY)
        out_fd = os.open("stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open("stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(stdin_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (stdin_fd, out_fd, err_fd, CTL_IN, CTL_OUT):
            os.close(fd)
        # The harness keeps its result pipe at a high descriptor and tells nobody where it is.
        res_fd = 200
        os.dup2(res_w, res_fd)
        os.close(res_w)
        # Descriptors are capped last: the result pipe sits above the cap, already open.
        _set_limit(resource.RLIMIT_NOFILE, limits.get("nofile"))
        nonce = case.get("nonce")
        case["nonce"] = None
        exit_code = _run_case(case, program, res_fd, nonce)
    except BaseException:  # the child must always reach os._exit
        import traceback

        _report(res_fd, "harness_error", traceback.format_exc()[-HEAD:])
        exit_code = 70
    os._exit(exit_code)


def _report(res_fd, kind, *values):
    """One tab-separated record line: kind, then values with tabs/newlines blanked."""
    fields = [kind, *(str(v).replace("\t", " ").replace("\n", " ") for v in values)]
    try:
        os.write(res_fd, ("\t".join(fields) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _run_case(case, program, res_fd, nonce):
    mode = program["mode"]
    if mode == "exec":
        # A compiled program replaces the child; the result pipe closes on exec, so the program
        # cannot write records (a fake "harness_error" would turn its wrong answer into a retry).
        os.set_inheritable(res_fd, False)
        signals = program["signals"]
        # Python ignores SIGPIPE and SIGXFSZ, and exec keeps ignored signals ignored: restored,
        # a program writing past the file-size limit is killed (an output limit), as it would be
        # outside, instead of looping on failed writes until its time runs out.
        for sig in (signals.SIGPIPE, signals.SIGXFSZ):
            signals.signal(sig, signals.SIG_DFL)
        try:
            os.execv(program["binary"], [program["binary"]])
        except OSError as exc:
            _report(res_fd, "harness_error", f"cannot execute the compiled program: {exc}")
            return 70
    g = dict(program["base"])
    g["__name__"] = "__main__" if mode == "stdio" else "solution"
    stage = "program"
    try:
        exec(program["code"], g)
        if mode == "call":
            stage = "tests"
            g["__curate_eq__"] = curate_eq
            exec(compile(case["test_setup"], "<tests>", "exec"), g)
            if case.get("entry"):
                g["candidate"] = _resolve_entry(case["entry"], g)
            exec(compile(case["test"], "<test case>", "exec"), g)
            _flush()
            _report(res_fd, "nonce", nonce)
            return 0
        _flush()
        _report(res_fd, "done")
        return 0
    except SystemExit as exc:
        _flush()
        code = exc.code
        if mode == "call":
            sys.stderr.write(f"SystemExit({code!r}) raised before the tests completed\n")
            _flush()
            _report(res_fd, "exc", "SystemExit", stage)
            return 1
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        sys.stderr.write(f"{code}\n")
        _flush()
        return 1
    except BaseException as exc:
        _flush()
        try:
            import traceback

            # Skip this harness frame: the trace starts in the program or the tests.
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        except BaseException:
            pass
        _flush()
        _report(res_fd, "exc", type(exc).__name__, stage)
        return 1


def _resolve_entry(entry, g):
    """`Solution().twoSum`, `has_close_elements`; a bare name that is only a method of the
    program's `Solution` class (APPS/TACO call-based tests) resolves to that method."""
    try:
        return eval(entry, g)
    except NameError:
        if entry.isidentifier() and "Solution" in g:
            return getattr(g["Solution"](), entry)
        raise


def _wait(pid, timeout):
    """Wait for ``pid`` up to ``timeout`` s; returns (status, rusage, timed_out)."""
    deadline = time.monotonic() + timeout
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, usage, False
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None, True
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_everything(pid):
    try:
        os.killpg(pid, SIGKILL)
    except OSError:
        pass
    if CONFIG.get("pidns"):
        # Alone in a PID namespace: kill(-1) reaches every process a case left behind (including
        # ones that escaped the group with setsid) and nothing outside.
        try:
            os.kill(-1, SIGKILL)
        except OSError:
            pass


def _reap():
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _remove_tree(path):
    for entry in os.scandir(path):
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _read_head(path, limit):
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return b"", 0
    return data, size


def _fork():
    """fork, riding out a transient EAGAIN: processes a previous case's fork bomb left behind
    still count against RLIMIT_NPROC until the kernel has reaped them."""
    for attempt in range(50):
        try:
            return os.fork()
        except BlockingIOError:
            _reap()
            time.sleep(0.02 * (attempt + 1))
    return os.fork()


def compile_native(msg):
    """Compile a native program (C++) in a child of its own session under rlimits and a wall
    clock. Returns None, ("compile", why) for the program's fault, ("infra", why) when the
    compiler itself cannot run (retried by the host, never scored as the program's fault)."""
    with open(os.path.join(WORK, msg["source_name"]), "w", encoding="utf-8") as fh:
        fh.write(msg["program"])
    err_path = os.path.join(WORK, "compile.log")
    timeout = float(msg["compile_timeout"])
    argv = msg["compile"]
    pid = _fork()
    if pid == 0:
        code = 126
        try:
            os.setsid()
            _set_limit(resource.RLIMIT_CPU, int(timeout) + 1)
            _set_limit(resource.RLIMIT_AS, msg.get("compile_memory_bytes"))
            _set_limit(resource.RLIMIT_FSIZE, CONFIG["limits"].get("fsize_bytes"))
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(err_fd, 1)
            os.dup2(err_fd, 2)
            for fd in (err_fd, CTL_IN, CTL_OUT):
                os.close(fd)
            try:
                os.execv(argv[0], argv)
            except OSError as exc:
                os.write(2, f"cannot run the compiler {argv[0]}: {exc}\n".encode())
                code = 127
        finally:
            os._exit(code)
    status, _usage, timed_out = _wait(pid, timeout)
    _kill_everything(pid)
    if timed_out:
        os.wait4(pid, 0)
    _reap()
    log, _ = _read_head(err_path, HEAD)
    text = log[:HEAD].decode("utf-8", "replace").strip()
    if timed_out:
        return ("compile", f"compilation took longer than {timeout:g}s")
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if exit_code in (126, 127):
        return ("infra", text or f"compiler exit code {exit_code}")
    if exit_code != 0:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return ("compile", text or (f"compiler killed by signal {sig}" if sig else f"compiler exit code {exit_code}"))
    return None


def run_case(case, program, index):
    case_dir = os.path.join(WORK, f"case{index}")
    os.makedirs(case_dir, exist_ok=True)
    with open(os.path.join(case_dir, "stdin"), "w", encoding="utf-8", newline="") as fh:
        fh.write(case.get("stdin") or "")
    nonce = os.urandom(16).hex()
    case["nonce"] = nonce
    res_r, res_w = os.pipe()
    started = time.monotonic()
    pid = _fork()
    if pid == 0:
        os.close(res_r)
        _child(case, case_dir, res_w, program)
    os.close(res_w)
    case["nonce"] = None
    status, usage, timed_out = _wait(pid, case["timeout"])
    wall = time.monotonic() - started
    _kill_everything(pid)
    if timed_out:
        _, status, usage = os.wait4(pid, 0)
    _reap()
    os.set_blocking(res_r, False)
    try:
        result_text = os.read(res_r, 65536).decode("utf-8", "replace")
    except OSError:
        result_text = ""
    os.close(res_r)
    records = [line.split("\t") for line in result_text.split("\n") if line]
    completed = any(r[0] == "nonce" and r[1:] == [nonce] for r in records)
    exc = next((r for r in records if r[0] == "exc" and len(r) >= 3), None)
    harness_error = next((r[1] for r in records if r[0] == "harness_error" and len(r) >= 2), None)
    cap = CONFIG["limits"]["output_bytes"]
    out, out_size = _read_head(os.path.join(case_dir, "stdout"), cap)
    err, _ = _read_head(os.path.join(case_dir, "stderr"), HEAD)
    _remove_tree(case_dir)
    return {
        "exit_code": os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "stdout": out[:cap].decode("utf-8", "replace"),
        "stdout_bytes": out_size,
        "output_limit": out_size > cap,
        "stderr": err[:HEAD].decode("utf-8", "replace"),
        "completed": completed,
        "exc": exc[1] if exc else None,
        "exc_stage": exc[2] if exc else None,
        "harness_error": harness_error,
        "wall_s": round(wall, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4) if usage is not None else None,
    }


def main():
    _setup_runner()
    program = None
    send({"ready": True, "uid": os.getuid(), "pid": os.getpid()})
    index = 0
    while True:
        try:
            msg = recv()
        except EOFError:
            return
        op = msg.get("op")
        if op == "load" and msg.get("mode") == "exec":
            failed = compile_native(msg)
            if failed is None:
                import signal  # slow to import (enum), so only for native programs, once

                program = {"mode": "exec", "binary": os.path.join(WORK, msg["binary_name"]), "signals": signal}
                send({"ok": True})
            elif failed[0] == "infra":
                send({"error": failed[1]})
            else:
                send({"ok": False, "error": failed[1]})
        elif op == "load":
            # Helpers defined by the prelude see this dict as their globals: the strict equality
            # must be here already.
            base = {"__curate_eq__": curate_eq}
            if msg.get("prelude"):
                # The prelude comes with the tests (imports a LeetCode solution assumes): run once
                # here, so every forked case inherits the imported modules.
                try:
                    exec(compile(msg["prelude"], "<prelude>", "exec"), base)
                except Exception as exc:
                    send({"error": f"tests prelude failed: {type(exc).__name__}: {exc}"})
                    continue
            try:
                code = compile(msg["program"], "<solution>", "exec")
            except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
                import traceback

                detail = "".join(traceback.format_exception_only(type(exc), exc))[-HEAD:]
                send({"ok": False, "error": detail})
                continue
            program = {"mode": msg["mode"], "base": base, "code": code}
            send({"ok": True})
        elif op == "case":
            if program is None:
                send({"error": "no program loaded"})
                continue
            try:
                send(run_case(msg, program, index))
            except Exception:  # report, never die
                import traceback

                send({"error": traceback.format_exc()[-HEAD:]})
            index += 1
        elif op == "batch":
            # Several cases in one round trip (fewer hand-offs between host, runner and child).
            # Stops early at a failure that needs no comparison: a non-zero exit, a signal, a
            # timeout, an output overflow, or a call-style case that did not complete.
            if program is None:
                send({"error": "no program loaded"})
                continue
            results = []
            try:
                for case in msg["cases"]:
                    result = run_case(case, program, index)
                    index += 1
                    results.append(result)
                    if (result["exit_code"] != 0 or result["timed_out"] or result["output_limit"]
                            or (program["mode"] == "call" and not result["completed"])):
                        break
                send({"results": results})
            except Exception:  # report, never die
                import traceback

                send({"error": traceback.format_exc()[-HEAD:]})
        elif op == "exit":
            return
        else:
            send({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    main()
