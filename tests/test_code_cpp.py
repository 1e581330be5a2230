"""C++ programs in the code verifier: compiled with g++ inside the sandbox, the executable run per
test case. Real problems (CodeContests, Codeforces from the shipped demo set) with handwritten
C++ references and labelled wrong variants; compile errors, crashes, timeouts; languages with no
runner reported as such; a compiler that cannot run is a sandbox error, never the program's."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa
import pytest

from curate.testing import run_stage_in_memory
from curate.verifiers.code import CodeVerifyConfig, CodeVerifyStage
from tests.conftest import DEMO_DATA

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed (apt-get install g++)")


def _demo_tests(source: str, starts: str) -> dict:
    """The tests of a shipped demo problem, re-tagged as a C++ problem."""
    with gzip.open(DEMO_DATA.parent / "demo_code" / "code_traces.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f.read().split("\n") if line]
    row = next(r for r in rows if r["source"] == source and r["prompt"].startswith(starts))
    return {**json.loads(row["tests"]), "language": "cpp"}


def _cpp(body: str, tag: str = "cpp") -> str:
    return f"Here is my solution.\n\n```{tag}\n{body}\n```\n"


SQUARE_OK = """#include <bits/stdc++.h>
using namespace std;
int main() { int t; cin >> t; while (t--) { string s; cin >> s; size_t h = s.size() / 2;
  cout << (s.size() % 2 == 0 && s.substr(0, h) == s.substr(h) ? "YES" : "NO") << "\\n"; } }"""
# Wrong edge case: forgets that an odd length is never square ("aaa" -> YES).
SQUARE_ODD = SQUARE_OK.replace("s.size() % 2 == 0 && s.substr(0, h) == s.substr(h)", "s.substr(0, h) == s.substr(h, h)")
MINMAX_OK = """#include <cstdio>
int main() { int t; scanf("%d", &t); while (t--) { int x, y; scanf("%d %d", &x, &y);
  printf("%d %d\\n", x < y ? x : y, x < y ? y : x); } }"""
# Swapped output order: max first.
MINMAX_SWAPPED = MINMAX_OK.replace("x < y ? x : y, x < y ? y : x", "x < y ? y : x, x < y ? x : y")
# The reward hack: exit successfully before reading anything.
EXIT_HACK = "#include <cstdlib>\nint main() { std::exit(0); }"


def _verify(rows: list[tuple[str, dict]], **cfg) -> list[dict]:
    cfg.setdefault("timeout_s", 2.0)
    table = pa.table({"answer": [a for a, _ in rows], "tests": [json.dumps(t) for _, t in rows]})
    out = run_stage_in_memory(CodeVerifyStage(CodeVerifyConfig(**cfg)), table).table
    assert out.num_rows == len(rows)
    return [{k.split("__", 1)[1]: v for k, v in r.items() if k.startswith("code__")} for r in out.to_pylist()]


def test_real_problems_references_pass_and_labelled_wrong_variants_fail():
    square = _demo_tests("rllm_codecontests_test", "A string is called square")
    minmax = _demo_tests("rllm_codeforces_test", "You are given two integers $x$ and $y$")
    got = _verify([
        (_cpp(SQUARE_OK), square),                 # reference
        (_cpp(SQUARE_ODD, "c++"), square),         # wrong edge case
        (_cpp(MINMAX_OK), minmax),                 # reference
        (_cpp(MINMAX_SWAPPED), minmax),            # wrong output order
        (_cpp(EXIT_HACK), minmax),                 # exit(0) hack
    ])
    assert [(g["verdict"], g["passed"], g["total"]) for g in got] == [
        ("pass", 4, 4), ("wrong_answer", 0, 4), ("pass", 1, 1), ("wrong_answer", 0, 1), ("wrong_answer", 0, 1)]
    failure = json.loads(got[1]["first_failure"])
    assert failure["reason"] == "output differs" and failure["got"].startswith("YES\nYES\nYES\n")  # "a", "aaa" say YES
    assert failure["expected"].startswith("NO\nYES\nNO\n")
    assert json.loads(got[4]["first_failure"])["got"] == ""
    # The strongest level this machine offers (bubblewrap where installed, as in CI).
    assert {g["isolation"] for g in got} == ({"bwrap"} if shutil.which("bwrap") else {got[0]["isolation"]})


STDIO = {"format": "stdin_stdout", "language": "cpp", "cases": [{"input": "2 3\n", "output": "5\n"}]}


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
def test_compile_errors_crashes_and_timeouts(isolation):
    got = _verify([
        (_cpp("int main() { return undefined_name; }"), STDIO),
        (_cpp("int main() { int *p = nullptr; return *p; }"), STDIO),
        (_cpp("int main() { volatile unsigned x = 0; for (;;) x++; }"), STDIO),
        (_cpp("#include <iostream>\nint main() { int a, b; std::cin >> a >> b; std::cout << a + b; return 3; }"), STDIO),
        (_cpp("#include <iostream>\nint main() { int a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }"), STDIO),
    ], isolation=isolation, timeout_s=1.0)
    assert [g["verdict"] for g in got] == ["compile_error", "runtime_error", "timeout", "runtime_error", "pass"]
    compile_error = json.loads(got[0]["first_failure"])
    assert compile_error["reason"] == "compile error" and "undefined_name" in compile_error["stderr"]
    assert json.loads(got[1]["first_failure"])["reason"] == "killed by signal SIGSEGV"
    assert json.loads(got[3]["first_failure"])["reason"] == "exit code 3"


def test_a_program_cannot_fake_records_on_the_result_pipe():
    # The harness's result pipe is closed on exec: writing a fake "harness_error" (which would
    # turn a wrong answer into a sandbox retry) finds no descriptor 200.
    fake = ('#include <unistd.h>\nint main() { const char m[] = "harness_error\\tfake\\n"; '
            'return write(200, m, sizeof m - 1) < 0 ? 0 : 0; }')
    (got,) = _verify([(_cpp(fake), STDIO)])
    assert got["verdict"] == "wrong_answer"


def test_languages_without_a_runner_are_reported_as_such():
    java = {**STDIO, "language": "java"}
    cpp_functional = {"format": "functional", "language": "cpp", "test_code": "def check(candidate): pass",
                      "entry_point": "f"}
    got = _verify([(_cpp("class A {}", "java"), java), (_cpp("int f() { return 1; }"), cpp_functional)])
    assert [g["verdict"] for g in got] == ["unsupported_language"] * 2
    assert json.loads(got[0]["first_failure"])["reason"] == "no runner for language 'java' (supported: python, cpp)"
    assert json.loads(got[1]["first_failure"])["reason"] == "cpp programs run stdin_stdout tests only, not functional"
    assert got[0]["passed"] is None and got[0]["total"] is None


def test_no_compiler_installed_is_unsupported_not_a_failure(monkeypatch):
    import curate.sandbox.native as native

    monkeypatch.setattr(native, "_find", lambda names: None)
    (got,) = _verify([(_cpp(MINMAX_OK), STDIO)])
    assert got["verdict"] == "unsupported_language"
    assert json.loads(got["first_failure"])["reason"].startswith("no cpp compiler found (tried g++, clang++")


def test_a_compiler_that_cannot_run_is_a_sandbox_error_never_a_compile_error(monkeypatch):
    import curate.sandbox.native as native

    real = native.compile_message
    monkeypatch.setattr(native, "compile_message",
                        lambda language: {**real(language), "compile": ["/nonexistent/g++", "solution.cpp"]})
    (got,) = _verify([(_cpp(MINMAX_OK), STDIO)], retries=1, isolation="rlimits")
    assert got["verdict"] == "sandbox_error"
    assert "cannot run the compiler /nonexistent/g++" in json.loads(got["first_failure"])["stderr"]


def test_hostile_cpp_programs_are_contained(tmp_path):
    """The same containment as for Python, for native code: no network, no writes outside the
    sandbox's /tmp, a fork bomb bounded, memory capped, output capped; the run goes on."""
    import os
    import socket

    from curate.sandbox.launch import SandboxUnavailable, choose_launcher

    level = "bwrap" if shutil.which("bwrap") else "unshare"
    try:
        choose_launcher(level, None)
    except SandboxUnavailable as exc:
        pytest.skip(f"no namespace isolation here: {exc}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    target = tmp_path / "pwned"
    network = f"""#include <arpa/inet.h>
#include <cstdio>
#include <sys/socket.h>
int main() {{ int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{{}}; a.sin_family = AF_INET;
  a.sin_port = htons({port}); a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  puts(connect(s, (sockaddr*)&a, sizeof a) == 0 ? "connected" : "blocked"); }}"""
    write = f"""#include <cstdio>
#include <initializer_list>
int main() {{ int n = 0; for (const char* p : {{"{target}", "/usr/pwned", "/etc/pwned"}}) {{
  FILE* f = fopen(p, "w"); if (f) {{ fputs("x", f); fclose(f); n++; }} }} printf("%d\\n", n); }}"""
    cases = [
        ("network", network, "connected\n", {"wrong_answer"}),
        ("write_outside", write, "3\n", {"wrong_answer"}),
        ("fork_bomb", "#include <unistd.h>\nint main() { for (;;) fork(); }", "42\n", {"timeout", "runtime_error"}),
        ("memory_hog", "#include <cstddef>\n#include <vector>\nint main() { std::vector<char> v(std::size_t(8) << 30, 1); return v[7]; }",
         "42\n", {"runtime_error", "memory"}),
        ("huge_output", "#include <cstdio>\nint main() { for (;;) puts(\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"); }",
         "42\n", {"runtime_error"}),
        ("sentinel", "#include <cstdio>\nint main() { puts(\"42\"); }", "42\n", {"pass"}),
    ]
    rows = [(_cpp(code), {**STDIO, "cases": [{"input": "", "output": expected}]}) for _, code, expected, _ in cases]
    got = _verify(rows, isolation=level, timeout_s=2.0)
    server.close()
    verdicts = {name: g["verdict"] for (name, *_), g in zip(cases, got, strict=True)}
    assert all(verdicts[name] in allowed for name, _, _, allowed in cases), verdicts
    # Python ignores SIGXFSZ; the executable gets it back, so writing past the cap ends it.
    assert json.loads(got[4]["first_failure"])["reason"] == "output limit exceeded"
    assert {g["isolation"] for g in got} == {level}
    assert not target.exists() and not os.path.exists("/usr/pwned") and not os.path.exists("/etc/pwned")
