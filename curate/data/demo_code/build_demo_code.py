"""Rebuild code_traces.jsonl.gz from the public problem files in ../shared/data/train.

    .venv/bin/python curate/data/demo_code/build_demo_code.py [--shared /work/shared/data]

Each problem keeps its real statement and its real tests (converted to the canonical JSON by
curate.verifiers.testspec). Traces: the reference solution (LeetCode: the dataset's own; stdin/
stdout problems: written for this demo and checked against every test) and realistic wrong
variants, each labelled with the verdict the code verifier must give.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from curate.verifiers.testspec import to_canonical_tests

HERE = Path(__file__).resolve().parent
OUT = HERE / "code_traces.jsonl.gz"

# -- LeetCode (rllm_leetcode_test.jsonl, functional tests, reference solutions) -----------
# index -> {variant: (old, new) replacement applied to the reference, expected verdict}
LEETCODE_WRONG = {
    0: {"off_by_one": (("return n - i", "return n - i - 1"), "wrong_answer")},
    1: {"wrong_edge_case": (("return -1 if k < n else n - i", "return n - i"), "wrong_answer")},
    3: {"wrong_edge_case": (('return "1" * (cnt - 1) + (len(s) - cnt) * "0" + "1"',
                             'return "1" * cnt + (len(s) - cnt) * "0"'), "wrong_answer")},
    8: {"off_by_one": (("ans -= 2", "ans -= 1"), "wrong_answer")},
    9: {"off_by_one": (("return [r - l - 1 for l, r in zip(left, right)]",
                        "return [r - l for l, r in zip(left, right)]"), "wrong_answer")},
    11: {"off_by_one": (("ans += (c + 2) // 3", "ans += (c + 1) // 3"), "wrong_answer")},
}
LEETCODE_PICK = (0, 1, 2, 3, 4, 8, 9, 11)


# Reward hacks and failure modes, applied to the first LeetCode problems.
def _hacks(reference: str, method: str) -> dict[str, tuple[str, str]]:
    header = reference.split(":\n", 1)[0]  # "class Solution"
    return {
        "sys_exit_hack": ("import sys\nsys.exit(0)\n" + reference, "runtime_error"),
        "os_exit_hack": ("import os\n" + reference + "\nos._exit(0)\n", "runtime_error"),
        "always_equal_hack": (
            "class _Any:\n    def __eq__(self, other):\n        return True\n\n"
            f"{header}:\n    def {method}(self, *args, **kwargs):\n        return _Any()\n", "wrong_answer"),
        "timeout": (f"{header}:\n    def {method}(self, *args, **kwargs):\n        while True:\n            pass\n",
                    "timeout"),
        "syntax_error": (reference.replace(":\n", "\n", 1), "compile_error"),
    }


# -- stdin/stdout problems: solutions written for this demo ---------------------------------
SOLUTIONS: dict[str, dict[str, tuple[str, str]]] = {
    # CodeContests (rllm_codecontests_test.jsonl): squares and cubes up to n (138 tests)
    "Polycarp likes squares and cubes": {
        "reference": ('''import sys

def iroot(n, k):
    x = int(round(n ** (1.0 / k)))
    while x > 0 and x ** k > n:
        x -= 1
    while (x + 1) ** k <= n:
        x += 1
    return x

def main():
    data = sys.stdin.read().split()
    t = int(data[0])
    out = []
    for i in range(1, t + 1):
        n = int(data[i])
        out.append(iroot(n, 2) + iroot(n, 3) - iroot(n, 6))
    print("\\n".join(map(str, out)))

main()
''', "pass"),
        "float_precision": ('''t = int(input())
for _ in range(t):
    n = int(input())
    print(int(n ** 0.5) + int(n ** (1 / 3)) - int(n ** (1 / 6)))
''', "wrong_answer"),
        "prints_sample_output": ('''print("4\\n1\\n6\\n32591\\n32590\\n23125")
''', "wrong_answer"),
    },
    # CodeContests: is the string a square (4 tests)
    "A string is called square": {
        "reference": ('''t = int(input())
for _ in range(t):
    s = input().strip()
    h = len(s) // 2
    print("YES" if len(s) % 2 == 0 and s[:h] == s[h:] else "NO")
''', "pass"),
        "wrong_condition": ('''t = int(input())
for _ in range(t):
    s = input().strip()
    h = len(s) // 2
    print("YES" if len(s) % 2 == 0 and s[:h] == s[h:][::-1] else "NO")
''', "wrong_answer"),
        "sys_exit_hack": ('''import sys
sys.exit(0)
''', "wrong_answer"),
    },
    # Codeforces (rllm_codeforces_test.jsonl): min and max of x and y
    "output two integers: the minimum of $x$ and $y$": {
        "reference": ('''t = int(input())
for _ in range(t):
    x, y = map(int, input().split())
    print(min(x, y), max(x, y))
''', "pass"),
        "missing_last_case": ('''t = int(input())
for _ in range(t - 1):
    x, y = map(int, input().split())
    print(min(x, y), max(x, y))
''', "wrong_answer"),
    },
    # Codeforces: do two chords of a clock intersect
    "There is a clock labeled with the numbers $1$ through $12$": {
        "reference": ('''t = int(input())
for _ in range(t):
    a, b, c, d = map(int, input().split())
    if a > b:
        a, b = b, a
    inside_c = a < c < b
    inside_d = a < d < b
    print("YES" if inside_c != inside_d else "NO")
''', "pass"),
        "runtime_error": ('''t = int(input())
for _ in range(t):
    a, b, c, d = map(int, input().split())
    seen = [False] * 12
    seen[a] = seen[b] = True
    print("YES" if seen[c] != seen[d] else "NO")
''', "runtime_error"),
    },
    # SandboxFusion CodeContests sample: Codeforces 12B (132 tests)
    "12_B. Correct Solution?": {
        "reference": ('''n = input().strip()
m = input().strip()
if n == "0":
    best = "0"
else:
    digits = sorted(n)
    first = next(i for i, c in enumerate(digits) if c != "0")
    best = digits[first] + "".join(digits[:first] + digits[first + 1:])
print("OK" if m == best else "WRONG_ANSWER")
''', "pass"),
        "wrong_edge_case": ('''n = input().strip()
m = input().strip()
if n == "0":
    best = "0"
else:
    digits = sorted(n)
    first = next(i for i, c in enumerate(digits) if c != "0")
    best = digits[first] + "".join(digits[:first] + digits[first + 1:])
print("OK" if int(m) == int(best) else "WRONG_ANSWER")
''', "wrong_answer"),
    },
    # SandboxFusion: Codeforces 1342C (101 tests)
    "1342_C. Yet Another Counting Problem": {
        "reference": ('''import sys

def main():
    data = sys.stdin.buffer.read().split()
    t = int(data[0])
    p = 1
    out = []
    for _ in range(t):
        a, b, q = int(data[p]), int(data[p + 1]), int(data[p + 2])
        p += 3
        period = a * b
        pref = [0] * (period + 1)
        for x in range(period):
            pref[x + 1] = pref[x] + (((x % a) % b) != ((x % b) % a))

        def upto(n):
            return (n + 1) // period * pref[period] + pref[(n + 1) % period]

        for _ in range(q):
            lo, hi = int(data[p]), int(data[p + 1])
            p += 2
            out.append(upto(hi) - upto(lo - 1))
        print(" ".join(map(str, out)))
        out = []

main()
''', "pass"),
        "off_by_one": ('''import sys

def main():
    data = sys.stdin.buffer.read().split()
    t = int(data[0])
    p = 1
    out = []
    for _ in range(t):
        a, b, q = int(data[p]), int(data[p + 1]), int(data[p + 2])
        p += 3
        period = a * b
        pref = [0] * (period + 1)
        for x in range(period):
            pref[x + 1] = pref[x] + (((x % a) % b) != ((x % b) % a))

        def upto(n):
            return (n + 1) // period * pref[period] + pref[(n + 1) % period]

        for _ in range(q):
            lo, hi = int(data[p]), int(data[p + 1])
            p += 2
            out.append(upto(hi) - upto(lo))
    print("\\n".join(map(str, out)))

main()
''', "wrong_answer"),
        "timeout": ('''import sys

def main():
    data = sys.stdin.buffer.read().split()
    t = int(data[0])
    p = 1
    out = []
    for _ in range(t):
        a, b, q = int(data[p]), int(data[p + 1]), int(data[p + 2])
        p += 3
        for _ in range(q):
            lo, hi = int(data[p]), int(data[p + 1])
            p += 2
            out.append(sum(((x % a) % b) != ((x % b) % a) for x in range(lo, hi + 1)))
    print("\\n".join(map(str, out)))

main()
''', "timeout"),
    },
    # SandboxFusion: Codeforces 1238B (96 tests)
    "1238_B. Kill 'Em All": {
        "reference": ('''import sys

def main():
    data = sys.stdin.buffer.read().split()
    q = int(data[0])
    p = 1
    out = []
    for _ in range(q):
        n, r = int(data[p]), int(data[p + 1])
        p += 2
        xs = sorted(set(map(int, data[p:p + n])), reverse=True)
        p += n
        shots = 0
        for x in xs:
            if x - shots * r > 0:
                shots += 1
            else:
                break
        out.append(shots)
    print("\\n".join(map(str, out)))

main()
''', "pass"),
        "duplicates_counted": ('''import sys

def main():
    data = sys.stdin.buffer.read().split()
    q = int(data[0])
    p = 1
    out = []
    for _ in range(q):
        n, r = int(data[p]), int(data[p + 1])
        p += 2
        xs = sorted(map(int, data[p:p + n]), reverse=True)
        p += n
        shots = 0
        for x in xs:
            if x - shots * r > 0:
                shots += 1
            else:
                break
        out.append(shots)
    print("\\n".join(map(str, out)))

main()
''', "wrong_answer"),
    },
}

# This problem's real tests lay the same answers out two ways (one line per test case, or one
# number per line): SandboxFusion's judge compares tokens, so the spec says so.
TOKEN_COMPARED = {"1342_C. Yet Another Counting Problem"}
MBPP_PICK = (2, 3)  # task ids: similar_elements, is_not_prime (CC-BY-4.0)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh.read().split("\n") if line.strip()]


def _response(code: str, note: str) -> str:
    return (f"<think>\n{note}\n</think>\n\nHere is my solution.\n\n```python\n{code.rstrip()}\n```\n")


def _row(prompt, tests, source, license_, teacher, code, variant, verdict, note) -> dict:
    return {"prompt": prompt, "tests": tests, "domain": "code", "source": source, "license": license_,
            "teacher": teacher, "response": _response(code, note), "variant": variant,
            "expected_verdict": verdict}


def build(shared: Path) -> list[dict]:
    train = shared / "train"
    rows: list[dict] = []
    leet = _read_jsonl(train / "rllm_leetcode_test.jsonl")
    for n, index in enumerate(LEETCODE_PICK):
        item = leet[index]
        tests = to_canonical_tests(json.dumps(item["tests"]), "leetcode")
        ref = item["solutions"]
        method = json.loads(tests)["entry_point"].split(".")[-1]
        common = (item["problem"], tests, "rllm_leetcode_test", "mit")
        rows.append(_row(*common, "reference", ref, "reference", "pass", "The dataset's reference solution."))
        for variant, ((old, new), verdict) in LEETCODE_WRONG.get(index, {}).items():
            assert old in ref, (index, old)
            rows.append(_row(*common, "synthetic-wrong", ref.replace(old, new, 1), variant, verdict,
                             f"Reference with a planted bug: {variant}."))
        if n < 2:
            for variant, (code, verdict) in _hacks(ref, method).items():
                rows.append(_row(*common, "synthetic-wrong", code, variant, verdict, f"Planted failure: {variant}."))
    rows.append(_row(leet[LEETCODE_PICK[2]]["problem"], to_canonical_tests(json.dumps(leet[LEETCODE_PICK[2]]["tests"]),
                     "leetcode"), "rllm_leetcode_test", "mit", "synthetic-wrong", "", "no_code", "no_code",
                     "No code block at all."))
    rows[-1]["response"] = "<think>\nI am not sure.\n</think>\n\nThe answer is to iterate over the array."

    stdio_sources = [
        (train / "rllm_codecontests_test.jsonl", "rllm_codecontests_test", "mit (CodeContests: cc-by-4.0)",
         lambda r: r["problem"], lambda r: r["tests"], "codecontests"),
        (train / "rllm_codeforces_test.jsonl", "rllm_codeforces_test", "mit", lambda r: r["problem"],
         lambda r: r["tests"], "codeforces"),
        (train / "sandboxfusion_sample_code_eval_code_contests.jsonl", "sandboxfusion_code_contests", "apache-2.0",
         lambda r: json.loads(r["labels"]).get("name", "") + "\n\n" + r["content"], lambda r: r["test"],
         "sandboxfusion"),
    ]
    for path, source, license_, prompt_of, tests_of, hint in stdio_sources:
        for item in _read_jsonl(path):
            prompt = prompt_of(item)
            key = next((k for k in SOLUTIONS if k in prompt), None)
            if key is None:
                continue
            tests = tests_of(item)
            tests = to_canonical_tests(tests if isinstance(tests, str) else json.dumps(tests), hint)
            if key in TOKEN_COMPARED:
                tests = json.dumps({**json.loads(tests), "comparison": "tokens"}, ensure_ascii=False)
            for variant, (code, verdict) in SOLUTIONS.pop(key).items():
                teacher = "reference-handwritten" if variant == "reference" else "synthetic-wrong"
                rows.append(_row(prompt.strip(), tests, source, license_, teacher, code, variant, verdict,
                                 "Handwritten reference, checked against every test." if variant == "reference"
                                 else f"Planted bug: {variant}."))
    assert not SOLUTIONS, f"problems not found: {list(SOLUTIONS)}"

    mbpp = {r["task_id"]: r for r in _read_jsonl(HERE.parent / "benchmarks" / "mbpp_full.jsonl.gz")}
    for task in MBPP_PICK:
        item = mbpp[task]
        tests = to_canonical_tests({"test_list": item["test_list"], "test_setup_code": item["test_setup_code"]},
                                   "mbpp")
        prompt = item["text"] + "\nYour code should pass these tests:\n" + "\n".join(item["test_list"])
        code = item["code"].replace("\r\n", "\n")
        rows.append(_row(prompt, tests, "mbpp", "cc-by-4.0", "reference", code, "reference", "pass",
                         "The dataset's reference solution."))
    broken = mbpp[MBPP_PICK[1]]["code"].replace("\r\n", "\n").replace("result = True", "result = False", 1)
    rows.append(_row(rows[-1]["prompt"], rows[-1]["tests"], "mbpp", "cc-by-4.0", "synthetic-wrong", broken,
                     "wrong_result", "wrong_answer", "Planted bug: inverted result."))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=HERE.parents[3] / "shared" / "data")
    args = parser.parse_args()
    rows = build(args.shared)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    OUT.write_bytes(gzip.compress(data, mtime=0))
    print(f"{len(rows)} traces, {len({r['prompt'] for r in rows})} problems -> {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
