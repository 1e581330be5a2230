"""Resource limits for one sandboxed program, and the clean environment it runs with."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# The only environment a sandboxed program sees: no tokens, keys, proxies or HOME of the host.
CLEAN_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
}


@dataclass(frozen=True)
class Limits:
    """Per test case unless noted. Enforced with rlimits inside the sandbox (memory is address
    space, RLIMIT_AS), a wall clock in the runner, and a host-side deadline around the runner."""

    timeout_s: float = 5.0  # wall clock per test case (CPU time is capped at ceil(timeout) + 1 s)
    memory_mb: int = 1024  # address space per case
    nproc: int = 64  # processes and threads, per sandbox (each sandbox has its own uid when root)
    output_mb: float = 16.0  # stdout kept per case; more is "output limit exceeded"
    fsize_mb: float = 16.0  # largest file a case may write (stdout included)
    nofile: int = 64  # open descriptors per case
    tmpfs_mb: int = 256  # size of the sandbox's private /tmp
    program_timeout_s: float = 120.0  # all cases of one program together
    compile_timeout_s: float = 30.0  # compiling a native (C++) program, wall clock and CPU
    compile_memory_mb: int = 2048  # address space of the compiler (cc1plus needs far more than a test)

    @property
    def output_bytes(self) -> int:
        return int(self.output_mb * 2**20)

    def runner_limits(self) -> dict[str, int]:
        """What the in-sandbox runner applies to each case's child process."""
        return {
            "memory_bytes": int(self.memory_mb) * 2**20,
            # One byte past the output cap must be writable, or the cap could not be detected.
            "fsize_bytes": int(max(self.fsize_mb, self.output_mb) * 2**20) + 1,
            "nofile": int(self.nofile),
            "output_bytes": self.output_bytes,
        }

    def to_dict(self) -> dict:
        return asdict(self)
