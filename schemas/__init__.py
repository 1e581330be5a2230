"""Arrow schemas of the tables trace-curate reads and writes, in one versioned place."""

from curate.schemas.columns import (
    SCORE_SEPARATOR,
    is_score_column,
    score_column,
    split_score_column,
)
from curate.schemas.ids import problem_ids, stable_hash, trace_ids
from curate.schemas.tables import (
    PROBLEM_COLUMNS,
    PROBLEMS_SCHEMA,
    SCHEMA_VERSION,
    TRACE_ONLY_COLUMNS,
    TRACES_SCHEMA,
    conform,
)
from curate.schemas.validate import RowError, SchemaValidationError, split_valid, validate

__all__ = [
    "PROBLEMS_SCHEMA",
    "PROBLEM_COLUMNS",
    "RowError",
    "SCHEMA_VERSION",
    "SCORE_SEPARATOR",
    "SchemaValidationError",
    "TRACES_SCHEMA",
    "TRACE_ONLY_COLUMNS",
    "conform",
    "is_score_column",
    "problem_ids",
    "score_column",
    "split_score_column",
    "split_valid",
    "stable_hash",
    "trace_ids",
    "validate",
]
