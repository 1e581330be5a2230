"""Shared fixtures. Tests build their inputs themselves; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DATA = REPO / "curate" / "data" / "demo"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def write_jsonl(path: Path, rows: list, *, raw_lines: dict[int, str] | None = None) -> Path:
    """Write rows as JSONL; `raw_lines` replaces given line numbers with raw text (malformed input)."""
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines[i] = text
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_engine():
    """The local test cluster every Ray test shares (2 CPUs, 2 logical GPUs): Ray is initialised
    once per process, so one fixture owns its start and its shutdown."""
    ray = pytest.importorskip("ray")
    from curate.testing_ray import local_test_engine

    engine = local_test_engine()
    engine.ensure_ray()
    resources = ray.cluster_resources()
    assert resources["CPU"] == 2 and resources["GPU"] == 2
    yield engine
    engine.shutdown()

