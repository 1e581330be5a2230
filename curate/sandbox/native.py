"""Compilers for native languages: what the sandbox runs to turn a program into an executable.

The compiler runs inside the same sandbox as the tests (it reads the model's source, and a
header can be made to do a great deal at compile time), with its own time and memory limits;
the executable then runs once per test case in place of the Python child.
"""

from __future__ import annotations

import functools
import shutil

# language -> (compiler names tried in order, source file, flags); the executable is "solution".
COMPILERS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "cpp": (("g++", "clang++"), "solution.cpp", ("-std=gnu++17", "-O2", "-pipe", "-o", "solution", "solution.cpp")),
}
BINARY = "solution"


class NoCompiler(RuntimeError):
    """The language is known but no compiler for it is installed here."""


@functools.cache
def _find(names: tuple[str, ...]) -> str | None:
    # Resolved to a real path under /usr: the bwrap sandbox mounts /usr, not /usr/local or $HOME.
    for name in names:
        path = shutil.which(name, path="/usr/bin:/bin") or shutil.which(name)
        if path:
            return path
    return None


def native_languages() -> tuple[str, ...]:
    return tuple(COMPILERS)


def compile_message(language: str) -> dict:
    """The runner's `load` fields for ``language`` (compile argv, file names)."""
    names, source, flags = COMPILERS[language]
    compiler = _find(names)
    if compiler is None:
        raise NoCompiler(f"no {language} compiler found (tried {', '.join(names)}; apt-get install g++)")
    return {"compile": [compiler, *flags], "source_name": source, "binary_name": BINARY}
