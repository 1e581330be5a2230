"""Final-answer extraction and normalisation (curate.verifiers.math_extract)."""

import polars as pl
import pytest

from curate.verifiers.math_extract import (
    choice_letter,
    extract_answer,
    extract_answer_expr,
    last_boxed,
    normalise,
)


@pytest.mark.parametrize(
    "answer,reasoning,reference,expected",
    [
        ("So the answer is $\\boxed{0.5}$.", None, "1/2", ("0.5", "answer:boxed")),
        # Only the last box, and nested braces kept whole.
        ("First \\boxed{3}, then \\boxed{\\frac{\\sqrt{a^{2}}}{b}}", None, "1", ("\\frac{\\sqrt{a^{2}}}{b}", "answer:boxed")),
        ("\\fbox{12}", None, "12", ("12", "answer:boxed")),
        ("so $\\boxed 7$", None, "7", ("7", "answer:boxed")),
        ("**Answer:** **73**", None, "73", ("73", "answer:answer_line")),
        ("The final answer is 42. Done.", None, "42", ("42", "answer:answer_line")),
        ("The answer is (C).", None, "C", ("C", "answer:choice")),
        ("The answer is $\\textbf{(B)}$", None, "C", ("B", "answer:choice")),
        # A letter is only looked for when the reference is a letter.
        ("The answer is (C).", None, "12", ("(C)", "answer:answer_line")),
        ("m + n = 25 + 169 = **194**", None, "194", ("194", "answer:last_number")),
        ("the distance is \\(12\\).", None, "12", ("12", "answer:last_number")),
        # A solution cut off mid-formula states no answer.
        ("4 \\left( -\\frac{7}{24} \\right) + 3 \\left( -\\frac{3}{8} \\right) +", None, "33", (None, None)),
        ("- For \\( 9 < x < 10 \\): \\( p(x)", None, "6", (None, None)),
        ("The total was 1,000.", None, "1000", (None, None)),
        ("I could not finish.", None, "7", (None, None)),
        # R1-style: nothing after </think>, the answer is inside the thinking (with annotation tags).
        ("", "so m + n = 33. </CYCLE>\n\n<FINAL> **Final Answer**\n\\boxed{33} </FINAL>", "33",
         ("33", "reasoning_tail:boxed")),
        (None, "... so the final answer is 42", "42", ("42", "reasoning_tail:answer_line")),
        # Never the last number of an unfinished thought.
        (None, "Then x = 25 and we still need to check", "25", (None, None)),
        # An answer with no result falls back to the thinking's conclusion.
        ("I think that's the answer.", "so \\boxed{8}", "8", ("8", "reasoning_tail:boxed")),
        # Degenerate output: empty boxes are no answer.
        ("\\boxed{}" * 50, None, "42", (None, None)),
        # "\boxed" written into JSON unescaped decodes to a backspace + "oxed".
        ("The total is \x08oxed{204}.", None, "204", ("204", "answer:boxed")),
    ],
)
def test_extract_answer(answer, reasoning, reference, expected):
    assert extract_answer(answer, reasoning, reference) == expected


def test_extraction_is_one_vectorised_expression():
    frame = pl.DataFrame({
        "a": ["\\boxed{1}", None, "Answer: 3"],
        "r": [None, "\\boxed{2}", "x"],
        "ref": ["1", "2", "3"],
    })
    out = frame.select(extract_answer_expr(pl.col("a"), pl.col("r"), pl.col("ref")).alias("x")).unnest("x")
    assert out.rows() == [("1", "answer:boxed"), ("2", "reasoning_tail:boxed"), ("3", "answer:answer_line")]


def test_boxed_deeper_than_the_regex_falls_through_but_last_boxed_is_exact():
    deep = "\\boxed{" + "{" * 8 + "1" + "}" * 8 + "}"
    assert extract_answer(deep, None, "1") == (None, None)
    assert last_boxed(deep) == "{" * 8 + "1" + "}" * 8
    assert last_boxed("a \\boxed{x^{2}} b \\boxed {\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("5.00", "5"),
        ("007", "7"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("30^\\circ", "30"),
        ("10\\text{ cm}", "10cm"),
        ("**73**.", "73"),
        ("x \\, = \\; 4", "x=4"),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


@pytest.mark.parametrize("text,letter", [("$\\text{(C)}$", "C"), ("**C**", "C"), ("(E).", "E"), ("42", None), ("CD", None)])
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter
