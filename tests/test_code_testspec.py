"""Canonical tests JSON: converters from every real format, the strict comparator, program
extraction."""

from __future__ import annotations

import gzip
import json

import pytest

from curate.verifiers.code_extract import extract_program
from curate.verifiers.testspec import (
    TestSpecError,
    call_cases,
    load_tests,
    outputs_match,
    to_canonical_tests,
)
from tests.conftest import REPO

BENCH = REPO / "curate" / "data" / "benchmarks"


def _jsonl(path):
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh.read().split("\n") if line.strip()]


def test_codecontests_inputs_outputs():
    spec = json.loads(to_canonical_tests({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}))
    assert spec == {"format": "stdin_stdout", "language": "python", "float_tol": None,
                    "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "3 4\n", "output": "7\n"}]}


def test_codeforces_pairs_and_python_literal_text():
    raw = repr([{"input": "2\n1 9\n8 4", "output": "1 9\n4 8"}])  # a Python literal, not JSON
    spec = json.loads(to_canonical_tests(raw, "codeforces"))
    assert spec["cases"] == [{"input": "2\n1 9\n8 4", "output": "1 9\n4 8"}]


def test_sandboxfusion_nested_stdin_stdout():
    raw = json.dumps([{"input": {"stdin": "5\n"}, "output": {"stdout": "25\n"}}])
    assert json.loads(to_canonical_tests(raw, "sandboxfusion"))["cases"] == [{"input": "5\n", "output": "25\n"}]


def test_leetcode_functional_takes_entry_point_from_the_check_call():
    raw = {"functional": "def check(candidate):\n    assert candidate(nums=[1]) == 1\n\n\ncheck(Solution().f)"}
    spec = json.loads(to_canonical_tests(raw, "leetcode"))
    assert spec["format"] == "functional" and spec["entry_point"] == "Solution().f"
    assert "check(Solution" not in spec["test_code"] and "from typing import *" in spec["prelude"]


def test_humaneval_and_mbpp_from_the_shipped_benchmarks():
    he = _jsonl(BENCH / "HumanEval.jsonl.gz")[0]
    spec = json.loads(to_canonical_tests({"test": he["test"], "entry_point": he["entry_point"]}, "humaneval"))
    assert spec["entry_point"] == "has_close_elements" and len(call_cases(spec, he["prompt"])) == 7
    mbpp = _jsonl(BENCH / "mbpp_full.jsonl.gz")[0]
    spec = json.loads(to_canonical_tests(mbpp["test_list"], "mbpp"))
    assert spec["format"] == "assert" and spec["asserts"] == mbpp["test_list"]


def test_apps_call_based_becomes_functional():
    spec = json.loads(to_canonical_tests({"fn_name": "add", "inputs": [[1, 2]], "outputs": [[3]]}))
    assert spec["entry_point"] == "add" and "assert candidate(*[1, 2]) == 3" in spec["test_code"]


def test_bad_tests_are_clear_errors():
    with pytest.raises(TestSpecError, match="2 inputs but 1 outputs"):
        to_canonical_tests({"inputs": ["1", "2"], "outputs": ["1"]})
    with pytest.raises(TestSpecError, match="unknown tests format hint"):
        to_canonical_tests("[]", "nope")
    with pytest.raises(TestSpecError, match="no test cases"):
        to_canonical_tests("[]")
    assert load_tests(None) is None and load_tests("  ") is None


def test_check_body_of_asserts_splits_into_cases_with_strict_equality():
    spec = json.loads(to_canonical_tests({"functional": "def check(candidate):\n    assert candidate(1) == 2\n"
                                                        "    assert candidate(2) != 5\n\ncheck(f)"}))
    cases = call_cases(spec, "def f(x):\n    return x + 1\n")
    assert [c.shown for c in cases] == ["assert candidate(1) == 2", "assert candidate(2) != 5"]
    assert cases[0].test == "assert __curate_eq__(candidate(1), 2)"
    assert cases[1].test == "assert not __curate_eq__(candidate(2), 5)"
    loop = json.loads(to_canonical_tests({"functional": "def check(candidate):\n    for i in range(3):\n"
                                                       "        assert candidate(i) == i + 1\n"}))
    assert [c.test for c in call_cases(loop, "def g(x):\n    return x + 1\n")] == ["check(candidate)"]
    assert call_cases(loop, "def g(x):\n    return x + 1\n")[0].entry == "g"


@pytest.mark.parametrize(("got", "expected", "ok"), [
    ("1 2\n3\n", "1 2\n3\n", True),
    ("1 2   \n3\n\n\n", "1 2\n3", True),  # trailing whitespace and blank lines
    ("1 2\n", "1 2\n3\n", False),  # a missing line: no zip over lines
    ("1 2\n3\n4\n", "1 2\n3\n", False),  # an extra line
    ("2 1\n3\n", "1 2\n3\n", False),  # token order matters
    (" 1 2\n3\n", "1 2\n3\n", False),  # leading whitespace is not trailing
    ("", "0\n", False),
])
def test_strict_line_comparator(got, expected, ok):
    assert outputs_match(got, expected) is ok


def test_float_tolerance_and_token_mode():
    assert not outputs_match("0.3333333\n", "0.333333333\n")
    assert outputs_match("0.3333333\n", "0.333333333\n", float_tol=1e-6)
    assert not outputs_match("0.34\n", "0.333333333\n", float_tol=1e-6)
    assert not outputs_match("nan\n", "1.0\n", float_tol=1e-6)
    assert outputs_match("1\n2\n3\n", "1 2 3\n", mode="tokens")
    assert not outputs_match("1 2\n", "1 2 3\n", mode="tokens")


def test_extract_last_block_of_the_language():
    answer = ("Try:\n```python\nprint(1)\n```\nC++:\n```cpp\nint main(){}\n```\nFinal:\n```py\nprint(2)\n```\n"
              "Output:\n```\n2\n```\n")
    assert extract_program(answer) == "print(2)\n"
    assert extract_program(answer, "cpp") == "int main(){}\n"
    assert extract_program("```\nx = 1\n```") == "x = 1\n"  # untagged block when none is tagged
    assert extract_program("~~~~python\nprint(3)\n~~~~") == "print(3)\n"
    assert extract_program("cut off:\n```python\nprint(4)\nfor i in") == "print(4)\nfor i in\n"
    assert extract_program("no code here") is None and extract_program(None) is None
    assert extract_program("```javascript\nconsole.log(1)\n```") is None
