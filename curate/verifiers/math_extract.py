"""Find the final answer in a trace and normalise answers for a cheap exact comparison.

Extraction order (the first that finds something wins): the last `\\boxed{...}` / `\\fbox{...}` of
the answer (only the last: two boxed answers must not become a set, math-verify issue #57), an
"Answer:" / "the answer is" line, a multiple-choice letter when the reference is a letter; and when
the answer part is empty (R1-style traces that end inside the thinking) the same search over the
tail of the reasoning.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"(?:final answer|answer)\s*(?:is|:|=)\s*[:\s]*(.+?)\s*(?:$|\n)", re.IGNORECASE
)
_CHOICE = re.compile(r"^\(?([A-E])\)?\.?$")
_CHOICE_IN_TEXT = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?\**([A-E])\**\)?(?![A-Za-z])", re.I)
_MARKDOWN = re.compile(r"\*\*|__|`")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
REASONING_TAIL_CHARS = 4000


def last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` in ``text``."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def strip_markdown(text: str) -> str:
    """`**73**` -> `73` (markdown leaking into answers, math-verify issue #76)."""
    return _MARKDOWN.sub("", text).strip()


def choice_letter(text: str) -> str | None:
    match = _CHOICE.match(strip_markdown(text).replace("$", "").replace("\\text{", "").rstrip("}").strip())
    return match.group(1) if match else None


def extract_answer(answer: str | None, reasoning: str | None, reference: str | None) -> tuple[str | None, str]:
    """(prediction, where it came from)."""
    wants_letter = reference is not None and choice_letter(reference) is not None
    for text, where in ((answer, "answer"), ((reasoning or "")[-REASONING_TAIL_CHARS:], "reasoning_tail")):
        if not text or not text.strip():
            continue
        boxed = last_boxed(text)
        if boxed is not None:
            return strip_markdown(boxed), f"{where}:boxed"
        if wants_letter:
            letters = _CHOICE_IN_TEXT.findall(text)
            if letters:
                return letters[-1].upper(), f"{where}:choice"
        lines = _ANSWER_LINE.findall(text)
        if lines:
            return strip_markdown(lines[-1]).rstrip(".").strip(), f"{where}:answer_line"
        if where == "answer":
            # Non-thinking models often end with "m + n = 25 + 169 = **194**": take the last number
            # of the last line, never of an unfinished reasoning (that would score truncated traces).
            last_line = text.strip().rsplit("\n", 1)[-1]
            numbers = _NUMBER.findall(strip_markdown(last_line))
            if numbers:
                return numbers[-1], "answer:last_number"
    return None, "none"


_SPACES = re.compile(r"\s+|\\[,;:! ]|\\quad|\\qquad")
_WRAPPERS = re.compile(r"\\left|\\right|\\displaystyle|\\dfrac|\\tfrac|\\mathrm|\\text|\\textbf|\^\{?\\circ\}?|\^\\circ")
_TRAILING_ZEROS = re.compile(r"^(-?\d+)\.0+$")


def normalise(text: str) -> str:
    """A conservative canonical form: equal strings here are equal answers. Only used to skip
    sympy on matches; a mismatch still goes to math-verify."""
    s = strip_markdown(text).strip().strip("$").strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _WRAPPERS.sub("", s)
    s = _SPACES.sub("", s).rstrip(".")
    match = _TRAILING_ZEROS.match(s)
    return match.group(1) if match else s
