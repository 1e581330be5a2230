"""The judge's prompt and the parsing of its reply, as plain functions (no I/O), so a template
can be checked when a pipeline is loaded and a reply parsed the same way in tests and runs.

A template is Python ``str.format`` text over the fields in `FIELDS`; braces meant literally
are doubled (``{{`` / ``}}``). Only the template is formatted, so the LaTeX braces of a
problem or an answer are never interpreted.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass

FIELDS = ("prompt", "answer", "reasoning", "reference")

DEFAULT_SYSTEM = "You are a strict, careful grader of solutions written by AI models."

DEFAULT_TEMPLATE = """Grade the response to the problem below. The problem has no single checkable answer, so judge \
whether the response is correct, complete and clearly argued.

[Problem]
{prompt}

[Response]
{answer}

Explain your judgement in a few sentences. Then end with one line of the form "Score: N", where N is an \
integer from 1 (wrong or useless) to 10 (fully correct and complete)."""

# The last "Score: N" line (markdown and "N/10" allowed); the last, because a judge may quote
# the rubric's "Score: N" before giving its own.
DEFAULT_SCORE_PATTERN = r"(?im)^[\W_]*score[\W_]*(?:is[\W_]*)?(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?\b"

_THINK = re.compile(r"(?s)^.*</think>")


def template_fields(template: str) -> set[str]:
    """Fields a template uses; raises ValueError naming what is wrong."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"judge template: {exc} (write literal braces as {{{{ and }}}})") from None
    unknown = sorted(n for n in names if n not in FIELDS)
    if unknown:
        raise ValueError(f"judge template: unknown field(s) {unknown}; known: {list(FIELDS)}")
    if "answer" not in names:
        raise ValueError("judge template: must contain {answer}")
    return names


def template_hash(system: str | None, template: str) -> str:
    """Identifies the exact prompt wording; recorded with every judged row."""
    return hashlib.sha256(f"{system or ''}\x00{template}".encode()).hexdigest()[:16]


def clip(text: str | None, max_chars: int) -> str:
    """The tail of a long text: a solution's conclusion is at its end."""
    text = text or ""
    return text if len(text) <= max_chars else "[...]" + text[-max_chars:]


def render(template: str, *, max_chars: int, **values: str | None) -> str:
    return template.format(**{k: clip(values.get(k), max_chars) for k in FIELDS})


@dataclass(frozen=True)
class Parsed:
    score: float | None
    verdict: str  # pass, fail or parse_error
    why: str | None = None  # for parse_error


def parse_reply(text: str | None, pattern: re.Pattern[str], low: float, high: float, pass_at: float) -> Parsed:
    """Score and verdict from the judge's reply. A thinking judge's ``<think>...</think>`` is
    dropped first: a score it mulls over there is not its answer."""
    if not text or not text.strip():
        return Parsed(None, "parse_error", "empty reply")
    visible = _THINK.sub("", text)
    found = pattern.findall(visible)
    if not found:
        return Parsed(None, "parse_error", "no score in the reply")
    last = found[-1]
    text = last[0] if isinstance(last, tuple) else last
    try:
        value = float(text)
    except ValueError:  # a custom score_pattern whose group caught something else
        return Parsed(None, "parse_error", f"score {text[:40]!r} is not a number")
    if not low <= value <= high:
        return Parsed(None, "parse_error", f"score {value:g} outside [{low:g}, {high:g}]")
    return Parsed(value, "pass" if value >= pass_at else "fail")
