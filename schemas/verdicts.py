"""The verdict vocabulary every consumer of verifier columns shares (select, difficulty, cards).

One definition, so a verifier's new outcome is counted the same way everywhere."""

from __future__ import annotations

# The verdict that marks a trace right, per verifier column.
VERIFIED = {"math__verdict": "correct", "code__verdict": "pass"}
# Verdicts that say nothing about correctness: no reference or tests to check against, an
# infrastructure failure, or a language the code verifier has no runner for.
UNCHECKED = ("no_reference", "no_tests", "sandbox_error", "no_code", "unsupported_language")
