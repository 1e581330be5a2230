"""The stage contract.

A stage is a small class with a name, a version, a typed pydantic config, the columns it reads
(`requires`) and the columns it adds (`output_fields`), and a function over Arrow tables
(`process`). Stages do no hidden I/O: the runner reads their input, writes their output shards,
manifests and rejects, and decides where they run (local process pool, Ray).

Three shapes cover every stage in trace-curate:

* a **map stage** (`Stage`): one Arrow batch in, one batch out (plus rejects and per-reason
  counters). Verifiers and most filters.
* a **global stage**: a map stage that also declares `fit_columns`. The runner first streams
  only those columns through `fit`, which returns a small *state table* (e.g. trace_id ->
  cluster id) that is saved next to the output and handed to every worker through
  `load_state`; `process` then joins it onto each batch. MinHash clustering, difficulty,
  `select`. Memory is bounded by the fit columns, never by the whole table.
* a **source stage** (`SourceStage`): reads files outside the run (import) and so plans its
  own work units.

Verifiers and filters add score columns and never drop rows; only `select` drops.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from curate.schemas.columns import score_column
from curate.schemas.validate import REJECTS_SCHEMA, empty_rejects


class StageConfig(BaseModel):
    """Base for every stage config: unknown keys are an error, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resources:
    """What one worker of the stage needs; the executor places workers accordingly."""

    cpus: float = 1.0
    gpus: float = 0.0
    # True when the stage holds a model (embeddings, vLLM, logit teacher): executors keep the
    # worker alive across units (an actor pool on Ray) instead of paying setup per unit.
    stateful: bool = False
    # Most workers worth running at once (e.g. a sandbox stage that forks its own pool).
    max_workers: int | None = None


@dataclass
class BatchResult:
    """What `process` returns: the rows that go on, the rows rejected, per-reason counters."""

    table: pa.Table
    rejects: pa.Table = field(default_factory=empty_rejects)
    counts: Counter[str] = field(default_factory=Counter)
    # Named side tables (e.g. select's "negatives"): written as <step>/<name>/part-*.parquet
    # by the same atomic, resumable shard writer as the main output.
    side_outputs: dict[str, pa.Table] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitContext:
    """Where the unit being processed will land. `scratch` is a folder private to the unit that
    survives a kill (e.g. a generator's append-only log of finished request keys, so a resumed
    unit asks only for what is missing) and is removed once the unit's shard is committed."""

    out_dir: Path
    unit: WorkUnit
    scratch: Path


C = TypeVar("C", bound=StageConfig)
TableName = Literal["traces", "problems"]


class Stage(Generic[C]):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    config_model: ClassVar[type[StageConfig]] = StageConfig
    description: ClassVar[str] = ""
    # Shown under --help: a full command line a user can paste.
    example: ClassVar[str] = ""
    # CLI path: ("verify", "math") -> `curate verify math`.
    cli: ClassVar[tuple[str, ...]] = ()
    table: ClassVar[TableName] = "traces"
    # Which table this stage writes (a generator reads problems and writes traces; the logit
    # cache writes "logits"). None: the same table it reads.
    output_table: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    score_namespace: ClassVar[str | None] = None
    fit_columns: ClassVar[tuple[str, ...]] = ()
    # Read by `fit` when the input has them (e.g. verifier verdicts a survivor policy prefers).
    fit_optional_columns: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    # Rows handed to `process` at once; bounded so memory stays flat on any input size.
    batch_rows: ClassVar[int] = 8192

    def __init__(self, config: C | None = None):
        self.config: C = config if config is not None else self.config_model()  # type: ignore[assignment]
        self.state: pa.Table | None = None
        # Set by the runner while a unit is processed; None in in-memory use (curate.testing).
        self.unit_context: UnitContext | None = None

    # -- declarations ------------------------------------------------------------------
    def output_fields(self) -> list[pa.Field]:
        """Columns this stage adds (score columns use `self.col(field)` names)."""
        return []

    def dropped_columns(self) -> tuple[str, ...]:
        return ()

    def col(self, field_name: str) -> str:
        if not self.score_namespace:
            raise TypeError(f"stage {self.name} declares no score_namespace")
        return score_column(self.score_namespace, field_name)

    @property
    def is_global(self) -> bool:
        return bool(self.fit_columns)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "version": self.version,
            "config": self.config.model_dump(mode="json"),
            "config_hash": self.config.config_hash(),
        }

    # -- lifecycle ---------------------------------------------------------------------
    def setup(self) -> None:
        """Called once per worker before any batch: load models, warm pools."""

    def teardown(self) -> None:
        """Called once per worker after its last batch."""

    def fit(self, batches: Iterable[pa.RecordBatch]) -> pa.Table | None:
        """Global step over `fit_columns` only; returns the state table `process` needs.
        ``batches`` may be iterated more than once (each pass re-reads the input)."""
        raise NotImplementedError(f"stage {self.name} declares fit_columns but no fit()")

    def load_state(self, state: pa.Table | None) -> None:
        self.state = state

    def process(self, batch: pa.Table) -> BatchResult:
        raise NotImplementedError

    def summarize(self, counts: Counter[str]) -> dict[str, Any]:
        """Extra manifest fields computed from the summed counters (optional)."""
        return {}


@dataclass(frozen=True)
class WorkUnit:
    """One deterministic slice of the input; one output shard. Units never overlap, so a
    resumed stage that skips finished units can neither lose nor duplicate a row."""

    index: int
    path: str
    # Parquet input: row groups of `path`; text input: [start, end) byte range.
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    first_row: int = 0  # row number of the unit's first row within `path` (for errors)
    rows: int | None = None  # known up front for Parquet, for progress bars

    @property
    def part_name(self) -> str:
        return f"part-{self.index:05d}"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "row_groups": list(self.row_groups) if self.row_groups is not None else None,
            "byte_range": list(self.byte_range) if self.byte_range is not None else None,
            "first_row": self.first_row,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkUnit:
        return cls(
            index=data["index"],
            path=data["path"],
            row_groups=tuple(data["row_groups"]) if data.get("row_groups") is not None else None,
            byte_range=tuple(data["byte_range"]) if data.get("byte_range") is not None else None,
            first_row=data.get("first_row", 0),
            rows=data.get("rows"),
        )


class SourceStage(Stage[C]):
    """A stage whose input lies outside the run (files a user points at)."""

    def input_paths(self) -> list[Path]:
        raise NotImplementedError

    def plan(self) -> list[WorkUnit]:
        raise NotImplementedError

    def read_unit(self, unit: WorkUnit) -> Iterator[BatchResult]:
        """Yield the unit's output batches (validated, rejects carried along); each result's
        ``counts["rows_in"]`` is the number of input rows it consumed."""
        raise NotImplementedError


def reject_rows(file: str, rows: list[int], field_name: str, reason: str, raw: list[str | None]) -> pa.Table:
    from curate.schemas.validate import rejects_table

    return rejects_table(file, rows, [field_name] * len(rows), [reason] * len(rows), raw)


__all__ = [
    "REJECTS_SCHEMA",
    "BatchResult",
    "Resources",
    "SourceStage",
    "Stage",
    "StageConfig",
    "WorkUnit",
    "reject_rows",
]
