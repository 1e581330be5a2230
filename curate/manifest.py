"""`_manifest.json`: what a finished stage did, enough to reproduce, skip or audit it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from curate.io import MANIFEST, read_json


class UnitStats(BaseModel):
    """Counters of one finished work unit (saved as `_part-NNNNN.json`)."""

    index: int
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    side_rows: dict[str, int] = Field(default_factory=dict)
    wall_s: float = 0.0


class Manifest(BaseModel):
    stage: str
    step: str
    version: str
    status: str = "complete"
    config: dict[str, Any]
    config_hash: str
    input: dict[str, Any]
    fingerprint: str
    output_fingerprint: str = ""
    output_table: str
    package_version: str
    schema_version: str
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    side_outputs: dict[str, int] = Field(default_factory=dict)
    parts: int = 0
    units_resumed: int = 0
    executor: str = ""
    workers: int = 1
    started_at: str = ""
    finished_at: str = ""
    wall_s: float = 0.0
    summary: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, step_dir: Path) -> Manifest | None:
        path = Path(step_dir) / MANIFEST
        if not path.exists():
            return None
        return cls.model_validate(read_json(path))


def fingerprint_of(stage_fingerprint: dict[str, Any], input_fingerprint: str) -> str:
    payload = json.dumps({"stage": stage_fingerprint, "input": input_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
