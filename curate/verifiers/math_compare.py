"""Compare one extracted answer with one reference using math-verify: the sympy part, run inside
the worker processes of `math_pool` (never in threads: the time limit is SIGALRM).

Guard rails for math-verify's known misfires:

* #70: a bare LaTeX reference (``\\dfrac{9}{7}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``) parses to
  nothing or to a fragment; references and predictions are parsed wrapped in ``$...$`` first,
  then as they are, then wrapped in ``\\boxed{}``.
* #60: without ``$...$`` math-verify's expression parser reduces ``3x-y+13=0`` and
  ``3x+4y+14=0`` to their right sides, ``0`` and ``0``, and calls them equal. The ``$`` wrapping
  keeps both as equations; should a parse still collapse an equation into a bare value, the two
  equations are compared side by side instead (left sides equal, right sides verified).
* #57 and #76 are handled by the extraction (`math_extract`): only the last ``\\boxed{}`` is
  taken, and markdown emphasis is stripped before anything reaches the parser.
"""

from __future__ import annotations

import logging
import re
import signal
from typing import Any

_CACHE_LIMIT = 20_000
_TIMED_OUT: list = []  # cached for a reference whose parse ran out of time (identity-compared)
_TOP_LEVEL_EQUALS = re.compile(r"(?<![<>!\\])=(?!=)")


class CompareTimeout(BaseException):
    """Raised by SIGALRM. A BaseException so math-verify's `except Exception` cannot swallow it
    (it would then report a timeout as an unparseable answer)."""


def _on_alarm(_signum, _frame):
    raise CompareTimeout()


class Comparer:
    """Holds the parsed references of one worker (each distinct reference is parsed once)."""

    def __init__(self, timeout_s: float, float_rounding: int = 6):
        from math_verify import parse, verify

        # Our own alarm is the time limit; math-verify's would nest with it, so it is disabled,
        # and it warns about exactly that on every call.
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        self._parse, self._verify = parse, verify
        self.timeout_s = timeout_s
        self.float_rounding = float_rounding
        self.references: dict[str, list] = {}

    def parse(self, text: str) -> list:
        return self._parse(text, parsing_timeout=None)

    def parse_answer(self, text: str) -> list:
        """Wrapped in $...$ first (#70, #60), then as it is, then boxed."""
        text = text.strip()
        attempts = [text] if text.startswith("$") else [f"${text}$", text]
        attempts.append(f"\\boxed{{{text.strip('$')}}}")
        for attempt in attempts:
            parsed = self.parse(attempt)
            # math-verify falls back to the bare string when it understands nothing; that is no parse.
            if any(not isinstance(p, str) for p in parsed):
                return parsed
        return []

    def reference(self, text: str) -> list:
        if text not in self.references:
            if len(self.references) >= _CACHE_LIMIT:
                self.references.clear()
            self.references[text] = self.parse_answer(text)
        return self.references[text]

    def equal(self, gold: list, target: list) -> bool:
        return bool(self._verify(gold, target, float_rounding=self.float_rounding, timeout_seconds=None))

    def _collapsed_equations(self, pred: str, ref: str, gold: list, target: list) -> bool | None:
        """Both texts are equations but a parse lost its equation (#60): compare side by side."""
        if not (_TOP_LEVEL_EQUALS.search(pred) and _TOP_LEVEL_EQUALS.search(ref)):
            return None
        if _is_equation(gold) and _is_equation(target):
            return None
        (ref_lhs, ref_rhs), (pred_lhs, pred_rhs) = (_split_equation(t) for t in (ref, pred))
        if _squash(ref_lhs) != _squash(pred_lhs):
            return False
        g, t = self.parse_answer(ref_rhs), self.parse_answer(pred_rhs)
        return bool(g and t and self.equal(g, t))

    def compare(self, pred: str, ref: str) -> tuple[str, str]:
        """(verdict, method) for one pair; never raises."""
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            gold = self.reference(ref)
            if gold is _TIMED_OUT:
                return "timeout", "alarm:reference"
            if not gold:
                return "unparseable_reference", "math_verify"
            target = self.parse_answer(pred)
            if not target:
                return "unparseable_prediction", "math_verify"
            side_by_side = self._collapsed_equations(pred, ref, gold, target)
            if side_by_side is not None:
                return ("correct" if side_by_side else "incorrect"), "math_verify:equation_sides"
            return ("correct" if self.equal(gold, target) else "incorrect"), "math_verify"
        except CompareTimeout:
            # A reference whose parse timed out is remembered as such: the next trace of the same
            # problem would time out again.
            self.references.setdefault(ref, _TIMED_OUT)
            return "timeout", "alarm"
        except Exception as exc:  # a sympy bug on one pair must not end the run
            return "error", f"math_verify:{type(exc).__name__}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _is_equation(parsed: list) -> bool:
    from sympy import Eq

    return bool(parsed) and isinstance(parsed[0], Eq)


def _split_equation(text: str) -> tuple[str, str]:
    lhs, rhs = _TOP_LEVEL_EQUALS.split(text, maxsplit=1)
    return lhs, rhs


def _squash(text: str) -> str:
    return re.sub(r"\s+|\$|\*", "", text)


# -- worker process entry point --------------------------------------------------------------


def serve(conn: Any, timeout_s: float, float_rounding: int) -> None:
    """Worker loop: receive chunks ``[(key, pred, ref), ...]``, answer ``(key, verdict, method)``
    one item at a time (the parent knows which item was running if it has to kill us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    comparer = Comparer(timeout_s, float_rounding)
    conn.send(("ready", None, None))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for key, pred, ref in chunk:
            verdict, method = comparer.compare(pred, ref)
            conn.send((key, verdict, method))
