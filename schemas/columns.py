"""The naming rule for score columns.

Verifiers and filters never drop rows; they add columns named ``<namespace>__<field>``
(double underscore), e.g. ``math__verdict`` or ``minhash__cluster_id``. The namespace is
the stage's declared ``score_namespace``, so `select` policies, cards and DuckDB queries can
find every score a stage wrote without knowing the stage, and plain SQL needs no quoting.
"""

from __future__ import annotations

import re

SCORE_SEPARATOR = "__"
_NAME = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$|^[a-z]$")


def score_column(namespace: str, field: str) -> str:
    """Return the column name for ``field`` written by the stage with ``namespace``."""
    for part, what in ((namespace, "namespace"), (field, "field")):
        if not _NAME.match(part) or SCORE_SEPARATOR in part:
            raise ValueError(
                f"score {what} {part!r} must be lower_snake_case without '{SCORE_SEPARATOR}'"
            )
    return f"{namespace}{SCORE_SEPARATOR}{field}"


def is_score_column(name: str) -> bool:
    return SCORE_SEPARATOR in name


def split_score_column(name: str) -> tuple[str, str]:
    """``'math__verdict'`` -> ``('math', 'verdict')``."""
    if not is_score_column(name):
        raise ValueError(f"{name!r} is not a score column (expected '<namespace>__<field>')")
    namespace, field = name.split(SCORE_SEPARATOR, 1)
    return namespace, field
