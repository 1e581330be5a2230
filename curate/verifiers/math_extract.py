"""Find the final answer of a trace and normalise answers, as polars expressions (no row loop).

Extraction order, the first that finds something wins, searched in the answer part first and,
when that holds nothing usable (empty, or R1-style traces whose answer sits inside the
thinking), in the last `REASONING_TAIL_CHARS` of the reasoning:

1. the content of the **last** ``\\boxed{...}`` / ``\\fbox{...}``. Only the last: math-verify
   joins several boxed answers into a set (its issue #57), so "\\boxed{3} ... \\boxed{4}" would
   match a reference of 3 or {3, 4};
2. a multiple-choice letter ("the answer is (C)"), when the reference is a letter;
3. an "Answer: ..." / "the final answer is ..." statement (the last one);
4. in the answer part only: a number that ends its last line ("m + n = 25 + 169 = **194**").
   Never in the reasoning, where the last number of an unfinished thought is no answer, and
   never from a line that goes on after the number (a solution cut off mid-formula).

Markdown emphasis is stripped from what is extracted (`**73**` -> `73`, math-verify #76).

Balanced braces cannot be matched by a regular expression, so ``\\boxed`` content is matched up
to `BOX_DEPTH` levels of nested braces (``\\frac{\\sqrt{a^{2}}}{b}`` is 3); deeper or unclosed
boxes fall through to the next rule. `last_boxed` is the exact (Python) version for callers with
one string.
"""

from __future__ import annotations

import polars as pl

REASONING_TAIL_CHARS = 4000
BOX_DEPTH = 6
# Looked at after the last \boxed: enough for any real answer, bounded for degenerate outputs.
_BOX_WINDOW = 4096


def _nested_braces(depth: int) -> str:
    inner = r"[^{}]*"
    for _ in range(depth):
        inner = r"(?:[^{}]|\{" + inner + r"\})*"
    return inner


_BOX_BODY = r"^\s*\{(" + _nested_braces(BOX_DEPTH) + r")\}"
_BOX_BARE = r"^ +([^\s${}]+)"  # "\boxed 5"
_MARKDOWN = r"\*\*|__|`"
_LETTER = r"^\(?([A-E])\)?[.:]?$"
_CHOICE_IN_TEXT = (
    r"(?i)(?:answer|option|choice)\s*(?:is|:)?\s*[:\s]*\$?(?:\\text(?:bf)?\{)?\(?\**\(?([A-E])\)?\**\)?\}?\$?"
    r"(?:[\s.,:;)]|$)"
)
_ANSWER_LINE = r"(?im)(?:final answer|answer)\s*(?:is|:|=)\s*[:\s*]*(.+?)\s*(?:\.\s|\.?$)"
# A number that ends the line (after markdown, `$`, `\)`, `\]`, final punctuation): "= **194**."
# A line that goes on after its last number ("... + 3 \left( -\frac{3}{8} \right) +") was cut off.
_FINAL_NUMBER = r"(?:^|[^\w.,])(-?\d+(?:\.\d+)?(?:/\d+)?)\s*(?:\$|\\\)|\\\]|[.!])*\s*$"


def strip_markdown(expr: pl.Expr) -> pl.Expr:
    """`**73**` -> `73`, and surrounding whitespace."""
    return expr.str.replace_all(_MARKDOWN, "").str.strip_chars()


def last_boxed_expr(text: pl.Expr) -> pl.Expr:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``; null when none."""
    unified = text.str.replace_all(r"\fbox", r"\boxed", literal=True)
    parts = unified.str.split(r"\boxed")
    tail = pl.when(parts.list.len() > 1).then(parts.list.last().str.slice(0, _BOX_WINDOW))
    return pl.coalesce(tail.str.extract(_BOX_BODY, 1), tail.str.extract(_BOX_BARE, 1)).str.strip_chars()


def choice_letter_expr(text: pl.Expr) -> pl.Expr:
    """The letter A-E when ``text`` *is* a choice ("C", "(C)", "$\\text{(C)}$", "**C**")."""
    bare = strip_markdown(text).str.replace_all(r"\$|\\text(?:bf)?\{|\\mathrm\{|\}|\s", "")
    return bare.str.extract(_LETTER, 1)


def _found(text: pl.Expr, wants_letter: pl.Expr, *, last_number: bool) -> list[tuple[str, pl.Expr]]:
    """(rule, candidate) pairs for one text, in priority order."""
    choices = text.str.extract_all(_CHOICE_IN_TEXT).list.last().str.extract(_CHOICE_IN_TEXT, 1)
    line = text.str.extract_all(_ANSWER_LINE).list.last().str.extract(_ANSWER_LINE, 1)
    rules = [
        ("boxed", strip_markdown(last_boxed_expr(text))),
        ("choice", pl.when(wants_letter).then(choices.str.to_uppercase())),
        ("answer_line", strip_markdown(line).str.strip_chars_end(".").str.strip_chars()),
    ]
    if last_number:
        final_line = text.str.strip_chars().str.split("\n").list.last()
        rules.append(("last_number", strip_markdown(final_line).str.extract(_FINAL_NUMBER, 1)))
    return [(name, pl.when(found.str.len_chars() > 0).then(found)) for name, found in rules]


def repair_json_escapes(text: pl.Expr) -> pl.Expr:
    r"""LaTeX written into JSON without escaping its backslashes loses them to JSON escapes:
    ``"\boxed"`` decodes to a backspace + ``oxed``, ``"\frac"`` to a form feed + ``rac`` (seen in
    real R1 traces). Neither control character occurs in real text, so both are put back."""
    return text.str.replace_all("\x08", "\\b", literal=True).str.replace_all("\x0c", "\\f", literal=True)


def extract_answer_expr(answer: pl.Expr, reasoning: pl.Expr, reference: pl.Expr) -> pl.Expr:
    """A struct ``{pred, source}``: the extracted final answer and where it came from
    (e.g. ``answer:boxed``, ``reasoning_tail:answer_line``); both null when nothing was found."""
    wants_letter = choice_letter_expr(reference).is_not_null()
    answer = repair_json_escapes(answer)
    tail = repair_json_escapes(reasoning.str.slice(-REASONING_TAIL_CHARS))
    candidates = [(f"answer:{n}", e) for n, e in _found(answer, wants_letter, last_number=True)]
    candidates += [(f"reasoning_tail:{n}", e) for n, e in _found(tail, wants_letter, last_number=False)]
    pred = pl.coalesce([e for _, e in candidates])
    source = pl.coalesce([pl.when(e.is_not_null()).then(pl.lit(name)) for name, e in candidates])
    return pl.struct(pred.alias("pred"), source.alias("source"))


def reference_expr(reference: pl.Expr) -> pl.Expr:
    """The reference answer to compare with: a reference that is a whole solution contributes its
    last ``\\boxed{}``; markdown and surrounding ``$`` are dropped."""
    ref = reference.cast(pl.Utf8).str.strip_chars()
    boxed = last_boxed_expr(ref)
    ref = pl.when(boxed.is_not_null()).then(boxed).otherwise(ref)
    return pl.when(ref.str.len_chars() > 0).then(strip_markdown(ref))


_SPACES = r"\s+|\\[,;:! ]|\\q?quad\b"
_WRAPPERS = r"\\left\b|\\right\b|\\displaystyle\b|\^\{?\\circ\}?|\^\\circ|°"
_TEXT_CMD = r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}"


def normalise_expr(expr: pl.Expr) -> pl.Expr:
    """A conservative canonical form: equal strings here are equal answers. It only lets a match
    skip sympy; anything that differs still goes to math-verify."""
    s = strip_markdown(expr).str.strip_chars("$ \n\t")
    s = s.str.replace_all(r"\\[dt]frac", r"\frac")
    s = s.str.replace_all(_TEXT_CMD, "$1")
    s = s.str.replace_all(_WRAPPERS, "").str.replace_all(_SPACES, "")
    s = s.str.strip_chars_end(".")
    # 5.00 -> 5, 007 -> 7 (integers compare as integers)
    s = s.str.replace(r"^(-?\d+)\.0+$", "$1").str.replace(r"^(-?)0+(\d)", "$1$2")
    return s


def is_integer_expr(expr: pl.Expr) -> pl.Expr:
    return expr.str.contains(r"^-?\d+$")


# -- one string at a time (tests, debugging, callers outside a pipeline) ---------------------


def _one(expr: pl.Expr, **columns: str | None) -> pl.Series:
    frame = pl.DataFrame({k: [v] for k, v in columns.items()}, schema={k: pl.Utf8 for k in columns})
    return frame.select(expr.alias("out")).to_series()


def extract_answer(answer: str | None, reasoning: str | None, reference: str | None) -> tuple[str | None, str | None]:
    """(prediction, where it came from) for one trace; the same rules as `extract_answer_expr`."""
    row = _one(extract_answer_expr(pl.col("a"), pl.col("r"), pl.col("ref")), a=answer, r=reasoning, ref=reference)
    found = row.to_list()[0]
    return found["pred"], found["source"]


def normalise(text: str) -> str:
    return _one(normalise_expr(pl.col("t")), t=text).to_list()[0]


def choice_letter(text: str) -> str | None:
    return _one(choice_letter_expr(pl.col("t")), t=text).to_list()[0]


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}``, any depth."""
    starts = []
    for marker in (r"\boxed", r"\fbox"):
        at = text.rfind(marker)
        if at >= 0:
            starts.append(at + len(marker))
    if not starts:
        return None
    i = max(starts)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start:j].strip()
    return None
