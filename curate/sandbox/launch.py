"""What every isolation level shares: the launch description, the interpreter the sandbox runs,
the unprivileged uids sandboxes run as, and the choice of the strongest level that works here."""

from __future__ import annotations

import contextlib
import functools
import marshal
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from curate.sandbox.limits import CLEAN_ENV, Limits

# Strongest first. `auto` picks the first whose probe passes on this machine.
LEVELS = ("bwrap", "unshare", "rlimits")
RUNNER_SOURCE = (Path(__file__).with_name("inside.py")).read_text()


class SandboxUnavailable(RuntimeError):
    """The isolation level asked for cannot run on this machine."""


@dataclass
class Launch:
    """One sandbox start: the command, who runs it, and what the runner inside is told."""

    argv: list[str]
    level: str
    user: int | None  # drop to this uid/gid before exec (root hosts only)
    workdir: str  # the runner's work folder, as seen inside the sandbox
    pidns: bool  # alone in a PID namespace: the runner may kill(-1) after each case
    host_dir: str | None = None  # a host folder to remove after the sandbox ends
    env: dict[str, str] = field(default_factory=lambda: dict(CLEAN_ENV))

    def runner_config(self, limits: Limits, nproc: int) -> str:
        """The runner's argv[1]: hex of a marshalled dict (the runner avoids importing json)."""
        return marshal.dumps({
            "workdir": self.workdir,
            "pidns": self.pidns,
            "nproc": nproc,
            "limits": limits.runner_limits(),
        }).hex()


def _world_usable(path: str) -> bool:
    """Can any uid execute ``path`` (every folder on the way searchable by others)?"""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


@functools.cache
def interpreter(preferred: str | None = None) -> str:
    """The Python the sandbox runs (stdlib only, `-I -S`). A dropped uid must be able to reach
    it, so the host's own interpreter is used only when it lies outside private folders (a
    pyenv under /root does not); the system python3 is the usual answer."""
    if preferred:
        return preferred
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""]
    usable = [c for c in candidates if c and os.path.exists(c)]
    if os.geteuid() == 0:
        for candidate in usable:
            if _world_usable(candidate):
                return os.path.realpath(candidate)
    return os.path.realpath(usable[0]) if usable else sys.executable


def interpreter_prefix(python: str) -> str:
    """The install prefix of an interpreter: the folder above its bin/."""
    return str(Path(os.path.realpath(python)).parent.parent)


class UidPool:
    """Distinct unprivileged uids for concurrent sandboxes of this process. RLIMIT_NPROC counts
    per real uid, so sharing one uid would let a fork bomb in one sandbox starve its neighbours;
    the base is derived from the pid so that worker processes do not collide either."""

    def __init__(self, size: int, base: int | None = None):
        self.enabled = os.geteuid() == 0
        start = base if base is not None else 200_000 + (os.getpid() % 4000) * 256
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(max(size, 1)):
            self._free.put(start + i)

    def acquire(self) -> int | None:
        return self._free.get() if self.enabled else None

    def release(self, uid: int | None) -> None:
        if uid is not None:
            self._free.put(uid)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    wanted = str(uid)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if line.split()[1] == wanted:
                            pids.append(int(entry.name))
                        break
        except OSError:
            continue
    return pids


def kill_uid(uid: int) -> None:
    """SIGKILL every process of a sandbox uid (root hosts, levels without a PID namespace): what
    a program forked and detached must not outlive it, nor count against the next program's
    process limit."""
    for _ in range(5):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def processes_of_current_user() -> int:
    """Without a uid of its own a sandbox shares RLIMIT_NPROC with the user's other processes, so
    its limit is set that much higher."""
    me = str(os.getuid())
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        count += line.split()[1] == me
                        break
        except OSError:
            continue
    return count


def probe(launcher, python: str) -> tuple[bool, str]:
    """Start the level once with a trivial runner-free command; (works, why not)."""
    uid_pool = UidPool(1)
    uid = uid_pool.acquire()
    try:
        launch = launcher.build(python, ["-I", "-S", "-c", "import os; print('ok', os.getuid())"], uid, Limits())
    except SandboxUnavailable as exc:
        return False, str(exc)
    try:
        proc = subprocess.run(
            launch.argv, env=launch.env, user=launch.user, group=launch.user,
            extra_groups=[] if launch.user is not None else None,
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if launch.host_dir:
            shutil.rmtree(launch.host_dir, ignore_errors=True)
    if proc.returncode != 0 or not proc.stdout.startswith("ok"):
        return False, (proc.stderr or proc.stdout).strip()[-500:] or f"exit {proc.returncode}"
    return True, ""


@functools.cache
def _probe_cached(level: str, python: str) -> tuple[bool, str]:
    return probe(launcher_for(level), python)


def launcher_for(level: str):
    from curate.sandbox.bwrap import BwrapLauncher
    from curate.sandbox.fallback import RlimitsLauncher, UnshareLauncher

    launchers = {"bwrap": BwrapLauncher, "unshare": UnshareLauncher, "rlimits": RlimitsLauncher}
    if level not in launchers:
        raise ValueError(f"unknown isolation level {level!r}; choose auto or one of {', '.join(LEVELS)}")
    return launchers[level]()


def choose_launcher(isolation: str = "auto", python: str | None = None):
    """The launcher for ``isolation`` (``auto``: the strongest that works here)."""
    python = interpreter(python)
    if isolation != "auto":
        ok, why = _probe_cached(isolation, python)
        if not ok:
            raise SandboxUnavailable(f"isolation {isolation!r} does not work on this machine: {why}")
        return launcher_for(isolation)
    reasons = []
    for level in LEVELS:
        ok, why = _probe_cached(level, python)
        if ok:
            return launcher_for(level)
        reasons.append(f"{level}: {why}")
    raise SandboxUnavailable("no isolation level works here: " + "; ".join(reasons))
