"""The benchmark registry: name -> shipped file, text field, id field, source and licence.

Every file's sha256 is checked against SHA256SUMS before use, so a silently changed benchmark
cannot make a decontamination report meaningless. Users add their own with `path.jsonl:FIELD`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parent.parent / "curate" / "data" / "benchmarks"
if not DATA.exists():  # installed wheel: filters/ lives at curate/filters
    DATA = Path(__file__).resolve().parent.parent / "data" / "benchmarks"


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    text: str
    id: str | None
    license: str


REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "math500.jsonl.gz", "problem", "unique_id", "MIT"),
    Benchmark("math_test", "math_test_full5000.jsonl.gz", "problem", "idx", "MIT"),
    Benchmark("gsm8k", "gsm8k_test.jsonl.gz", "question", None, "MIT"),
    Benchmark("aime24", "aime24.jsonl.gz", "problem", "id", "MIT"),
    Benchmark("aime25", "aime25_matharena.jsonl.gz", "problem", "id", "MIT"),
    Benchmark("amc23", "amc23.jsonl.gz", "problem", "id", "MIT"),
    Benchmark("amc22_23", "amc_2022_2023_rllm.jsonl.gz", "problem", "url", "MIT"),
    Benchmark("hmmt_feb24", "hmmt_feb24_matharena.jsonl.gz", "problem", "id", "MIT"),
    Benchmark("hmmt_feb25", "hmmt_feb25_matharena.jsonl.gz", "problem", "id", "MIT"),
    Benchmark("minerva", "minerva_math.jsonl.gz", "problem", "idx", "MIT"),
    Benchmark("olympiadbench", "olympiadbench.jsonl.gz", "question", "id", "MIT"),
    Benchmark("humaneval", "HumanEval.jsonl.gz", "prompt", "task_id", "MIT"),
    Benchmark("mbpp", "mbpp_full.jsonl.gz", "text", "task_id", "CC-BY-4.0"),
    Benchmark("livecodebench", "livecodebench_v6_problems_1055.jsonl.gz", "question_content", "question_id", "MIT"),
]}


class BenchmarkError(ValueError):
    pass


def _checksums() -> dict[str, str]:
    lines = (DATA / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def _read_rows(path: Path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    text = data.decode()
    if path.name.endswith((".json", ".json.gz")):
        return json.loads(text)
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def load(spec: str) -> pl.DataFrame:
    """Items of a registered benchmark, or of a user file given as ``path.jsonl:text_field``:
    columns benchmark, item_id, text."""
    if spec in REGISTRY:
        bench = REGISTRY[spec]
        path = DATA / bench.file
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if _checksums().get(bench.file) != digest:
            raise BenchmarkError(f"benchmark {spec}: {path} does not match its sha256 in SHA256SUMS")
        name, text_field, id_field = spec, bench.text, bench.id
    else:
        file, sep, text_field = spec.rpartition(":")
        if not sep or not Path(file).exists():
            known = ", ".join(REGISTRY)
            raise BenchmarkError(f"unknown benchmark {spec!r}: use one of {known}, or PATH.jsonl:TEXT_FIELD")
        path, name, id_field = Path(file), Path(file).name.split(".")[0], None
    rows = _read_rows(path)
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get(text_field), str)]
    if missing:
        raise BenchmarkError(f"{path}: row {missing[0]}, field {text_field!r}: missing or not text")
    return pl.DataFrame({
        "benchmark": [name] * len(rows),
        "item_id": [str(r.get(id_field)) if id_field and r.get(id_field) is not None else str(i)
                    for i, r in enumerate(rows)],
        "text": [r[text_field] for r in rows],
    })
