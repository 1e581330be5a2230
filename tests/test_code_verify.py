"""`verify_code` on real problems: known-correct solutions pass and known-wrong ones fail, for
every test format (LeetCode check functions, CodeContests / Codeforces / SandboxFusion stdin/
stdout, MBPP assert lists, HumanEval check functions), plus the columns' exact contents."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pyarrow as pa
import pytest

from curate.sandbox.launch import SandboxUnavailable, choose_launcher
from curate.testing import run_stage_in_memory
from curate.verifiers.code import CodeVerifyConfig, CodeVerifyStage
from curate.verifiers.testspec import to_canonical_tests
from tests.conftest import REPO

DEMO = REPO / "curate" / "data" / "demo_code" / "code_traces.jsonl.gz"
BENCH = REPO / "curate" / "data" / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def _sandbox_available():
    try:
        choose_launcher("auto")
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))


def _verify(answers, tests, **cfg):
    cfg = {"timeout_s": 2.0, "workers": 2, **cfg}
    table = pa.table({"answer": answers, "tests": tests})
    return run_stage_in_memory(CodeVerifyStage(CodeVerifyConfig(**cfg)), table)


def _demo_rows():
    with gzip.open(DEMO, "rt") as fh:
        return [json.loads(line) for line in fh]


def test_shipped_demo_traces_get_their_labelled_verdicts():
    rows = _demo_rows()
    assert len(rows) == 45 and {r["source"] for r in rows} == {
        "rllm_leetcode_test", "rllm_codecontests_test", "rllm_codeforces_test", "sandboxfusion_code_contests", "mbpp"}
    out = _verify([r["response"].split("</think>")[-1] for r in rows], [r["tests"] for r in rows]).table
    got = out.column("code__verdict").to_pylist()
    wrong = [(r["source"], r["variant"], r["expected_verdict"], g) for r, g in zip(rows, got, strict=True)
             if g != r["expected_verdict"]]
    assert wrong == []
    # Every reference passes all of its cases; every wrong variant fails.
    for r, passed, total in zip(rows, out.column("code__passed").to_pylist(), out.column("code__total").to_pylist(),
                                strict=True):
        if r["expected_verdict"] == "pass":
            assert passed == total and total > 0
        elif r["expected_verdict"] != "no_code":
            assert passed < total


def test_columns_types_and_first_failure():
    tests = json.dumps({"format": "stdin_stdout", "cases": [{"input": "2\n", "output": "4\n"},
                                                            {"input": "3\n", "output": "9\n"}]})
    result = _verify(["```python\nn = int(input())\nprint(n + n)\n```", "```python\nprint(int(input()) ** 2)\n```",
                      "```python\nprint(\n```", "no code", "```python\nprint(1)\n```"],
                     [tests, tests, tests, tests, None])
    out = result.table
    assert out.schema.field("code__passed").type == pa.int32() and out.schema.field("code__total").type == pa.int32()
    assert out.column("code__verdict").to_pylist() == ["wrong_answer", "pass", "compile_error", "no_code", "no_tests"]
    assert out.column("code__passed").to_pylist() == [1, 2, 0, None, None]
    assert out.column("code__total").to_pylist() == [2, 2, 2, None, None]
    failure = json.loads(out.column("code__first_failure").to_pylist()[0])
    assert failure == {"case": 1, "reason": "output differs", "input": "3\n", "expected": "9\n", "got": "6\n",
                       "stderr": ""}
    assert "SyntaxError" in json.loads(out.column("code__first_failure").to_pylist()[2])["stderr"]
    assert out.column("code__isolation").to_pylist()[3:] == [None, None]
    assert result.counts["verdict:pass"] == 1 and result.counts["programs_run"] == 3


def test_duplicate_programs_run_once_and_rows_are_never_dropped():
    tests = json.dumps({"format": "assert", "asserts": ["assert f(2) == 4"]})
    answers = ["```python\ndef f(x):\n    return x * 2\n```"] * 5 + ["```python\ndef f(x):\n    return x + 3\n```"]
    result = _verify(answers, [tests] * 6)
    assert result.table.num_rows == 6
    assert result.table.column("code__verdict").to_pylist() == ["pass"] * 5 + ["wrong_answer"]
    assert result.counts["programs_run"] == 2 and result.counts["duplicate_programs"] == 4


def test_unreadable_tests_get_no_tests_with_the_reason():
    out = _verify(["```python\nprint(1)\n```"], ['{"format": "stdin_stdout", "cases": []}']).table
    assert out.column("code__verdict").to_pylist() == ["no_tests"]
    assert "non-empty" in json.loads(out.column("code__first_failure")[0].as_py())["reason"]


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    with gzip.open(BENCH / "HumanEval.jsonl.gz", "rt") as fh:
        problems = [json.loads(line) for line in fh][:12]
    answers, tests = [], []
    for p in problems:
        spec = to_canonical_tests({"test": p["test"], "entry_point": p["entry_point"]}, "humaneval")
        answers.append(f"```python\n{p['prompt']}{p['canonical_solution']}\n```")
        # A realistic wrong variant: the function returns its default (None) for every input.
        answers.append(f"```python\n{p['prompt']}    return None\n```")
        tests += [spec, spec]
    verdicts = _verify(answers, tests).table.column("code__verdict").to_pylist()
    assert verdicts[0::2] == ["pass"] * len(problems)
    assert all(v in ("wrong_answer", "runtime_error") for v in verdicts[1::2])


def test_mbpp_reference_code_passes_its_asserts():
    with gzip.open(BENCH / "mbpp_full.jsonl.gz", "rt") as fh:
        problems = [json.loads(line) for line in fh][10:30]
    tests = [to_canonical_tests({"test_list": p["test_list"], "test_setup_code": p["test_setup_code"]}, "mbpp")
             for p in problems]
    answers = [f"```python\n{p['code']}\n```" for p in problems]
    verdicts = _verify(answers, tests).table.column("code__verdict").to_pylist()
    assert verdicts == ["pass"] * len(problems)


def test_leetcode_train_references_from_shared_data(shared_data):
    """More than the demo: the first 30 rllm LeetCode train problems' own solutions all pass."""
    path = shared_data / "train" / "rllm_leetcode_train.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        problems = [json.loads(line) for line in fh.read().split("\n")[:30] if line.strip()]
    tests = [to_canonical_tests(json.dumps(p["tests"]), "leetcode") for p in problems]
    verdicts = _verify([f"```python\n{p['solutions']}\n```" for p in problems], tests,
                       timeout_s=5.0).table.column("code__verdict").to_pylist()
    assert verdicts == ["pass"] * len(problems)


def test_end_to_end_import_and_verify_through_the_runner(tmp_path):
    from curate.generators.importer import ImportConfig, ImportTracesStage
    from curate.runner import run_stage

    cfg = ImportConfig(paths=[str(DEMO)], columns={"prompt": "prompt", "response": "response", "tests": "tests",
                                                   "teacher": "teacher", "source": "source", "license": "license"},
                       keep=["variant", "expected_verdict"], domain="code")
    run_stage(ImportTracesStage(cfg), out_dir=tmp_path / "01-import", progress=False)
    stage = CodeVerifyStage(CodeVerifyConfig(timeout_s=2.0))
    manifest = run_stage(stage, input_dir=tmp_path / "01-import", out_dir=tmp_path / "02-code", progress=False)
    df = pl.read_parquet(tmp_path / "02-code" / "part-*.parquet").with_columns(
        pl.col("trace_metadata").str.json_decode(pl.Struct({"variant": pl.Utf8, "expected_verdict": pl.Utf8}))
        .struct.field("expected_verdict"))
    assert df.height == 45 and set(df["license"]) == {"mit", "mit (CodeContests: cc-by-4.0)", "apache-2.0",
                                                       "cc-by-4.0"}
    assert (df["code__verdict"] == df["expected_verdict"]).all()
    assert manifest is not None
