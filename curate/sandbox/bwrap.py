"""The strongest level: bubblewrap (Debian/Ubuntu package `bubblewrap`).

Every namespace unshared (no network: only a down loopback; own PID namespace; no IPC), all
capabilities dropped, uid 65534 inside, killed with its parent, a new session (no TIOCSTI into
the host terminal). The file system is a minimal read-only view, not the host's `/`: /usr (and
the merged-/usr links), the interpreter's prefix, /proc, a tiny /dev and a private size-capped
tmpfs /tmp that is the only writable place. A bind of the whole `/` would expose the host's
files: inside a user namespace the sandbox uid maps to the caller, so even 0600 files of the
user running curate would be readable (checked), and so would test data lying on disk.

On a root host the sandbox additionally runs as a distinct unprivileged uid (bwrap then uses an
unprivileged user namespace): RLIMIT_NPROC is not enforced for root, so a fork bomb would
otherwise be bounded only by the machine.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from curate.sandbox.launch import Launch, SandboxUnavailable, interpreter_prefix
from curate.sandbox.limits import Limits

INSIDE_UID = 65534


@functools.cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap") or (("/usr/bin/bwrap") if os.path.exists("/usr/bin/bwrap") else None)


@functools.cache
def _supports_size(bwrap: str) -> bool:
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in text


def _root_links() -> list[str]:
    """Merged-/usr systems link /bin, /lib... into /usr; older ones have real folders."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


class BwrapLauncher:
    level = "bwrap"

    def build(self, python: str, args: list[str], uid: int | None, limits: Limits) -> Launch:
        bwrap = bwrap_path()
        if bwrap is None:
            raise SandboxUnavailable("bwrap is not installed (apt-get install bubblewrap)")
        prefix = interpreter_prefix(python)
        argv = [
            bwrap,
            "--unshare-all", "--unshare-net",
            # The runner is PID 1 of its namespace: a program cannot kill it (init ignores
            # signals it has no handler for) and kill(-1) reaches only the sandbox.
            "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            *_root_links(),
        ]
        if not (prefix == "/usr" or prefix.startswith("/usr/")):
            argv += ["--ro-bind", prefix, prefix]
        argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--proc", "/proc", "--dev", "/dev"]
        if _supports_size(bwrap):
            argv += ["--size", str(int(limits.tmpfs_mb) * 2**20)]
        argv += ["--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv"]
        launch = Launch(argv=argv, level=self.level, user=uid, workdir="/tmp/work", pidns=True)
        for key, value in launch.env.items():
            argv += ["--setenv", key, value]
        argv += ["--", python, *args]
        return launch
