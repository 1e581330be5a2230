"""Isolation without bubblewrap.

`unshare` (util-linux): new network (no interfaces up), PID, IPC, UTS and mount namespaces;
private tmpfs over /tmp, /var/tmp, /dev/shm and over the folders that hold users' files and
data (/home, /root, /work, ...), so the only writable places are the sandbox's own; then, on a
root host, `setpriv` drops to an unprivileged uid with no capabilities and no_new_privs. On a
non-root host it maps the user to root inside a user namespace instead (no uid drop possible).

`rlimits`: the weakest level, for machines with no namespaces at all: a clean environment, a
private work folder, rlimits (address space, CPU, file size, descriptors, processes), its own
session and process-group kills. No network or file-system isolation; the output says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from curate.sandbox.launch import Launch, SandboxUnavailable, interpreter_prefix
from curate.sandbox.limits import Limits

# Folders where users' files, secrets and data sets usually live: hidden behind an empty tmpfs
# unless the interpreter itself lives there.
HIDDEN = ("/home", "/root", "/work", "/srv", "/mnt", "/media", "/opt", "/var", "/run", "/data")
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def _hidden_dirs(python: str) -> list[str]:
    prefix = interpreter_prefix(python) + "/"
    cwd_top = "/" + os.getcwd().strip("/").split("/")[0] if os.getcwd() != "/" else None
    dirs = [*HIDDEN, *([cwd_top] if cwd_top else [])]
    keep = []
    for path in dict.fromkeys(dirs):
        if os.path.isdir(path) and not os.path.islink(path) and not prefix.startswith(path + "/"):
            keep.append(path)
    return keep


class UnshareLauncher:
    level = "unshare"

    def build(self, python: str, args: list[str], uid: int | None, limits: Limits) -> Launch:
        unshare = shutil.which("unshare")
        setpriv = shutil.which("setpriv")
        if unshare is None:
            raise SandboxUnavailable("util-linux `unshare` is not installed")
        root = os.geteuid() == 0
        if root and setpriv is None:
            raise SandboxUnavailable("util-linux `setpriv` is not installed")
        mounts = []
        for path in _hidden_dirs(python):
            mounts.append(f"mount -t tmpfs -o size=1m,mode=0755 tmpfs {path}")
        hidden = _hidden_dirs(python)
        for path in SCRATCH:
            size = f"{int(limits.tmpfs_mb)}m" if path == "/tmp" else "1m"
            if os.path.isdir(path) and not any(path.startswith(h + "/") for h in hidden):
                mounts.append(f"mount -t tmpfs -o size={size},mode=1777,nosuid,nodev tmpfs {path}")
        script = " && ".join([*mounts, 'cd /tmp && exec "$@"'])
        argv = [unshare, "--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child",
                "--mount-proc"]
        if not root:
            argv += ["--user", "--map-root-user"]
        argv += ["--", "/bin/sh", "-c", script, "sandbox-init"]
        if root:
            target = uid if uid is not None else 65534
            argv += [setpriv, "--reuid", str(target), "--regid", str(target), "--clear-groups",
                     "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        argv += [python, *args]
        # `unshare` must start as root to set up the namespaces; setpriv drops inside.
        return Launch(argv=argv, level=self.level, user=None, workdir="/tmp/work", pidns=True)


class RlimitsLauncher:
    level = "rlimits"

    def build(self, python: str, args: list[str], uid: int | None, limits: Limits) -> Launch:
        host_dir = tempfile.mkdtemp(prefix="curate-sandbox-")
        if uid is not None:
            os.chown(host_dir, uid, uid)
        os.chmod(host_dir, 0o700)
        launch = Launch(argv=[python, *args], level=self.level, user=uid,
                        workdir=os.path.join(host_dir, "work"), pidns=False, host_dir=host_dir)
        launch.env["HOME"] = launch.env["TMPDIR"] = host_dir
        return launch
