import polars as pl
import pyarrow as pa
import pytest

from curate.runner import run_stage
from curate.testing import run_stage_in_memory
from curate.verifiers.math import MathVerifyConfig, MathVerifyStage
from curate.verifiers.math_extract import extract_answer, last_boxed
from tests.conftest import DEMO_DATA


def _verify(rows, **cfg):
    table = pa.table({
        "reference_answer": [r[0] for r in rows],
        "answer": [r[1] for r in rows],
        "reasoning": [r[2] if len(r) > 2 else None for r in rows],
        "domain": ["math"] * len(rows),
    })
    out = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(**cfg)), table).table
    return list(zip(out.column("math__pred").to_pylist(), out.column("math__verdict").to_pylist(), strict=True))


def test_typed_verdicts():
    assert _verify([
        ("\\frac{1}{2}", "So the answer is $\\boxed{0.5}$."),
        ("204", "The total is \\boxed{205}."),
        (None, "\\boxed{3}"),
        ("7", "I could not finish."),
        ("C", "The answer is (C)."),
        ("C", "The answer is (B)."),
    ]) == [
        ("0.5", "correct"), ("205", "incorrect"), (None, "no_reference"), (None, "unparseable_prediction"),
        ("C", "correct"), ("B", "incorrect"),
    ]


def test_guard_reference_without_dollars_issue_70():
    # A bare LaTeX reference must parse (math-verify #70): it is tried wrapped in $...$.
    assert _verify([("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}")]) == [("(3, \\pi/2)", "correct")]


def test_guard_two_boxed_answers_do_not_become_a_set_issue_57():
    # Only the last box counts: {3, 4} must not match a reference of "3, 4" or "4".
    assert _verify([("3", "First \\boxed{3}, then corrected: \\boxed{4}")]) == [("4", "incorrect")]
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"


def test_guard_markdown_leaking_into_answer_issue_76():
    assert _verify([("73", "**Answer:** **73**")]) == [("73", "correct")]


def test_guard_equations_reducing_to_zero_are_not_equal_issue_60():
    # math-verify alone calls these equal (both reduce to "= 0"); the right sides differ.
    assert _verify([("x = 5", "\\boxed{x = 3}"), ("y = 2x", "\\boxed{y = 2x}")]) == [
        ("x = 3", "incorrect"), ("y = 2x", "correct")]


def test_answer_inside_reasoning_when_answer_part_is_empty():
    assert extract_answer("", "lots of thinking... so the final answer is \\boxed{42}", "42") == (
        "42", "reasoning_tail:boxed")


def test_timeout_is_a_verdict_not_a_crash(monkeypatch):
    import curate.verifiers.math as mod

    def hang(text):
        while True:
            pass

    monkeypatch.setattr(mod, "_parse", hang)
    assert _verify([("x^2", "\\boxed{x^{2} + 0}")], timeout_s=0.2) == [("x^{2} + 0", "timeout")]


def test_agreement_with_the_shipped_grader_labels_and_explained_disagreements(tmp_path):
    """The demo traces carry the Qwen-Math grader's label (`score`). Every disagreement falls in a
    category where the grader is wrong or the trace never states an answer:
    * truncated: the thinking never closed; the grader took a number from unfinished reasoning.
    * no_final_statement: the answer part restates no result ("I think that's the answer.").
    * last_number: no box or "Answer:" line; our last-number-of-the-last-line fallback and the
      grader's last-number-anywhere disagree (2 traces of the "wrong-5K" student).
    * grader_garbage: the grader extracted "270Wait,butearlier..." for an answer line "27 miles".
    """
    from curate.generators.importer import ImportConfig, ImportTracesStage

    files = sorted(str(p) for p in DEMO_DATA.glob("skythought_*.jsonl.gz"))
    cfg = ImportConfig(paths=files, columns={"prompt": "question", "response": "response", "teacher": "model",
                                             "reference_answer": "gt"}, keep=["score"], domain="math")
    run_stage(ImportTracesStage(cfg), out_dir=tmp_path / "01-import", progress=False)
    run_stage(MathVerifyStage(), input_dir=tmp_path / "01-import", out_dir=tmp_path / "02-math", progress=False)
    df = pl.read_parquet(tmp_path / "02-math" / "part-*.parquet").with_columns(
        pl.col("trace_metadata").str.json_decode(pl.Struct({"score": pl.Boolean})).struct.field("score"))
    agree = ((df["math__verdict"] == "correct") == df["score"]).sum()
    assert df.height == 1080 and agree == 1069
    dis = df.filter((pl.col("math__verdict") == "correct") != pl.col("score"))
    category = dis.select(
        pl.when(pl.col("think_closed") == False).then(pl.lit("truncated"))  # noqa: E712
        .when(pl.col("math__method").str.contains("last_number")).then(pl.lit("last_number"))
        .when(pl.col("math__verdict") == "correct").then(pl.lit("grader_garbage"))
        .otherwise(pl.lit("no_final_statement")).alias("c"))["c"].value_counts().sort("c")
    assert dict(category.rows()) == {"grader_garbage": 1, "last_number": 2, "no_final_statement": 2, "truncated": 6}


@pytest.mark.parametrize("domain,verdict", [("code", "no_reference"), ("math", "correct")])
def test_only_configured_domains_are_verified(domain, verdict):
    table = pa.table({"reference_answer": ["1"], "answer": ["\\boxed{1}"], "reasoning": [None], "domain": [domain]})
    out = run_stage_in_memory(MathVerifyStage(), table).table
    assert out.column("math__verdict").to_pylist() == [verdict]
