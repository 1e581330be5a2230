"""`curate verify math`: is the trace's final answer equal to the reference answer?

Scores with the math-verify library (LaTeX, sets, intervals, units, percentages, equations)
behind three things public pipelines lack:

* a typed verdict, never a bare 0: correct, incorrect, no_reference, unparseable_reference,
  unparseable_prediction, timeout;
* a hard per-trace time limit (sympy can hang): SIGALRM around parse + verify, which is why
  this runs in worker processes (math-verify's own alarms cannot run in threads) and why a
  timeout is a verdict, not a crash;
* speed: normalised exact matches short-circuit sympy, and each distinct reference is parsed once.

Guard rails for math-verify's known misfires (its GitHub issues): a reference without `$...$`
is parsed wrapped in `$...$` too (#70); only the last `\\boxed{}` is extracted, so two boxed
answers never become a set (#57); markdown emphasis is stripped (`**73**`, #76); two equations are
equal only when their left sides match and their right sides verify, not because both reduce
to `= 0` (#60).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import Counter
from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.stage import BatchResult, Resources, Stage, StageConfig
from curate.verifiers.math_extract import choice_letter, extract_answer, normalise, strip_markdown

VERDICTS = ("correct", "incorrect", "no_reference", "unparseable_reference", "unparseable_prediction", "timeout")


class MathVerifyConfig(StageConfig):
    timeout_s: float = Field(5.0, description="Hard limit per trace for parsing and comparing.")
    float_rounding: int = Field(6, description="Decimal places compared for floats.")
    domains: list[str] = Field(["math", "science"], description="Domains verified; other rows get no_reference.")


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """SIGALRM-based limit; only the main thread can take signals, elsewhere it is a no-op."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(_signum, _frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=None)


def _parse_reference(reference: str) -> list:
    parsed = _parse(f"${reference}$") if "$" not in reference else []
    return parsed or _parse(reference) or _parse(f"\\boxed{{{reference}}}")


def _is_equation(parsed: list) -> bool:
    return bool(parsed) and type(parsed[0]).__name__ == "Equality"


class MathVerifyStage(Stage[MathVerifyConfig]):
    name = "verify_math"
    version = "1"
    config_model = MathVerifyConfig
    description = "Check each trace's final answer against the reference answer with math-verify."
    example = "curate verify math runs/demo --timeout-s 5"
    cli = ("verify", "math")
    requires = ("reference_answer", "answer", "reasoning", "domain")
    score_namespace = "math"
    resources = Resources(cpus=1)
    batch_rows = 512

    def output_fields(self) -> list[pa.Field]:
        return [
            pa.field(self.col("pred"), pa.string()),
            pa.field(self.col("verdict"), pa.string()),
            pa.field(self.col("method"), pa.string()),
        ]

    def setup(self) -> None:
        import logging

        import math_verify  # noqa: F401  (import once per worker, not per batch)

        # We disable math-verify's own alarms (they cannot nest with ours) and it warns about that
        # on every call; our `time_limit` is the limit.
        logging.getLogger("math_verify").setLevel(logging.ERROR)

    def _verify_one(self, pred: str, reference: str, ref_cache: dict[str, Any]) -> tuple[str, str]:
        from math_verify import verify

        ref_letter = choice_letter(reference)
        if ref_letter is not None:
            letter = choice_letter(pred)
            return ("correct" if letter == ref_letter else "incorrect"), "choice_letter"
        if normalise(pred) == normalise(reference):
            return "correct", "exact_match"
        try:
            with time_limit(self.config.timeout_s):
                if reference not in ref_cache:
                    ref_cache[reference] = _parse_reference(reference)
                gold = ref_cache[reference]
                if not gold:
                    return "unparseable_reference", "math_verify"
                target = _parse(f"${strip_markdown(pred)}$") or _parse(pred)
                if not target:
                    return "unparseable_prediction", "math_verify"
                if _is_equation(gold) and _is_equation(target):
                    same_lhs = gold[0].lhs == target[0].lhs
                    ok = same_lhs and verify(gold[0].rhs, target[0].rhs, float_rounding=self.config.float_rounding,
                                             timeout_seconds=None)
                    return ("correct" if ok else "incorrect"), "math_verify:equation"
                ok = verify(gold, target, float_rounding=self.config.float_rounding, timeout_seconds=None)
                return ("correct" if ok else "incorrect"), "math_verify"
        except _Timeout:
            return "timeout", "math_verify"

    def process(self, batch: pa.Table) -> BatchResult:
        refs = batch.column("reference_answer").to_pylist()
        answers = batch.column("answer").to_pylist()
        reasonings = batch.column("reasoning").to_pylist()
        domains = batch.column("domain").to_pylist()
        preds, verdicts, methods = [], [], []
        ref_cache: dict[str, Any] = {}
        counts: Counter[str] = Counter()
        # Inherently per trace (sympy); parallelism comes from the worker pool, one process per core.
        for ref, answer, reasoning, domain in zip(refs, answers, reasonings, domains, strict=True):
            if domain not in self.config.domains or ref is None or not str(ref).strip():
                pred, verdict, method = None, "no_reference", "none"
            else:
                pred, where = extract_answer(answer, reasoning, ref)
                if pred is None or not pred.strip():
                    verdict, method = "unparseable_prediction", where
                else:
                    verdict, how = self._verify_one(pred, str(ref).strip(), ref_cache)
                    method = f"{where}/{how}"
            preds.append(pred)
            verdicts.append(verdict)
            methods.append(method)
            counts[f"verdict:{verdict}"] += 1
        out = batch
        for name, values in (("pred", preds), ("verdict", verdicts), ("method", methods)):
            out = out.append_column(self.col(name), pa.array(values, pa.string()))
        return BatchResult(out, counts=counts)
