"""The benchmark registry: name -> shipped file, text field, id field, source and licence.

Every shipped file's sha256 is checked against `SHA256SUMS` before use, so a silently changed
benchmark cannot make a decontamination report meaningless. Groups name several at once
(`math`, `code`, `all`). A user's own benchmark is `PATH[:TEXT_FIELD[:ID_FIELD]]` with PATH a
JSONL, JSON (a list of objects) or Parquet file, gzipped or not.

`load(spec)` returns a polars frame with columns benchmark, item_id, text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
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
    source: str
    domain: str = "math"


_QWEN = "QwenLM/Qwen2.5-Math@a45202bd16f1 evaluation/data"
_ARENA = "eth-sri/matharena@96440b20d0b9 data"
REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "math500.jsonl.gz", "problem", "unique_id", "MIT",
              "GAIR-NLP/LIMO@2284c6a0e665 eval/data/math/test.jsonl (= openai/prm800k MATH-500)"),
    Benchmark("math_test", "math_test_full5000.jsonl.gz", "problem", "idx", "MIT",
              "Zhuofeng-Li/math-evaluation-harness@1b9885d81796 data/math/test.jsonl"),
    Benchmark("gsm8k", "gsm8k_test.jsonl.gz", "question", None, "MIT",
              "openai/grade-school-math@3101c7d50724 grade_school_math/data/test.jsonl"),
    Benchmark("aime24", "aime24.jsonl.gz", "problem", "id", "MIT", f"{_QWEN}/aime24/test.jsonl"),
    Benchmark("aime25", "aime25_matharena.jsonl.gz", "problem", "id", "MIT", f"{_ARENA}/aime/aime_2025_*"),
    Benchmark("amc23", "amc23.jsonl.gz", "problem", "id", "MIT", f"{_QWEN}/amc23/test.jsonl"),
    Benchmark("amc22_23", "amc_2022_2023_rllm.jsonl.gz", "problem", "url", "MIT",
              "agentica-project/rllm@874daa4acb7f rllm/data/test/math/amc.json"),
    Benchmark("hmmt_feb24", "hmmt_feb24_matharena.jsonl.gz", "problem", "id", "MIT", f"{_ARENA}/hmmt"),
    Benchmark("hmmt_feb25", "hmmt_feb25_matharena.jsonl.gz", "problem", "id", "MIT", f"{_ARENA}/hmmt"),
    Benchmark("minerva", "minerva_math.jsonl.gz", "problem", "idx", "MIT", f"{_QWEN}/minerva_math/test.jsonl"),
    Benchmark("olympiadbench", "olympiadbench.jsonl.gz", "question", "id", "MIT",
              f"{_QWEN}/olympiadbench/test.jsonl"),
    Benchmark("humaneval", "HumanEval.jsonl.gz", "prompt", "task_id", "MIT",
              "openai/human-eval@6d43fb980f9f data/HumanEval.jsonl.gz", "code"),
    Benchmark("mbpp", "mbpp_full.jsonl.gz", "text", "task_id", "CC-BY-4.0 (data), MIT (code)",
              "deepseek-ai/DeepSeek-Coder@2f9fd85927c6 Evaluation/MBPP/data/mbpp.jsonl", "code"),
    Benchmark("livecodebench", "livecodebench_v6_problems_1055.jsonl.gz", "question_content", "question_id",
              "MIT; problem text belongs to AtCoder/LeetCode/Codeforces",
              "LiveCodeBench/LiveCodeBench@8a7b1b44c429 (PR 137) statements only", "code"),
]}

GROUPS: dict[str, list[str]] = {
    "aime": ["aime24", "aime25"],
    "hmmt": ["hmmt_feb24", "hmmt_feb25"],
    "math": [b.name for b in REGISTRY.values() if b.domain == "math"],
    "code": [b.name for b in REGISTRY.values() if b.domain == "code"],
    "all": list(REGISTRY),
}
_TEXT_FIELDS = ("problem", "question", "prompt", "text", "question_content")


class BenchmarkError(ValueError):
    pass


def expand(specs: list[str]) -> list[str]:
    """Groups replaced by their members, duplicates dropped, order kept (it breaks ties in reports)."""
    out: list[str] = []
    for spec in specs:
        for name in GROUPS.get(spec, [spec]):
            if name not in out:
                out.append(name)
    return out


def _checksums() -> dict[str, str]:
    lines = (DATA / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def _read_rows(path: Path) -> pl.DataFrame:
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        return pl.read_parquet(path)
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
    try:
        if name.endswith(".json"):
            rows = json.loads(text)
        else:  # JSONL: split on "\n" only (U+2028 may sit inside a string)
            rows = []
            for number, line in enumerate(text.split("\n")):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise BenchmarkError(f"{path}: row {len(rows)} (line {number + 1}): invalid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BenchmarkError(f"{path}: expected JSON objects, one per line (or a JSON list of objects)")
    return pl.DataFrame(rows, infer_schema_length=None)


def _items(frame: pl.DataFrame, path: Path, name: str, text_field: str, id_field: str | None) -> pl.DataFrame:
    if text_field not in frame.columns:
        raise BenchmarkError(f"{path}: field {text_field!r} not found (fields: {', '.join(frame.columns)})")
    bad = frame.with_row_index("_row").filter(
        pl.col(text_field).is_null() | (pl.col(text_field).cast(pl.Utf8, strict=False).str.strip_chars() == ""))
    if frame.schema[text_field] != pl.Utf8 or bad.height:
        row = bad["_row"][0] if bad.height else 0
        raise BenchmarkError(f"{path}: row {row}, field {text_field!r}: missing, empty or not text")
    if id_field is not None and id_field not in frame.columns:
        raise BenchmarkError(f"{path}: id field {id_field!r} not found (fields: {', '.join(frame.columns)})")
    ids = (pl.col(id_field).cast(pl.Utf8) if id_field else pl.int_range(pl.len()).cast(pl.Utf8))
    return frame.select(pl.lit(name).alias("benchmark"),
                        pl.coalesce(ids, pl.int_range(pl.len()).cast(pl.Utf8)).alias("item_id"),
                        pl.col(text_field).alias("text"))


@lru_cache(maxsize=64)
def _load(spec: str) -> pl.DataFrame:
    if spec in REGISTRY:
        bench = REGISTRY[spec]
        path = DATA / bench.file
        if not path.exists():
            raise BenchmarkError(f"benchmark {spec}: shipped file {path} is missing")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if _checksums().get(bench.file) != digest:
            raise BenchmarkError(f"benchmark {spec}: {path} does not match its sha256 in {DATA / 'SHA256SUMS'}")
        return _items(_read_rows(path), path, spec, bench.text, bench.id)
    parts = spec.split(":")
    # PATH, PATH:TEXT or PATH:TEXT:ID (a path itself may hold no colon)
    for cut in (len(parts), len(parts) - 1, len(parts) - 2):
        if cut >= 1 and Path(":".join(parts[:cut])).is_file():
            path, extra = Path(":".join(parts[:cut])), parts[cut:]
            break
    else:
        known = ", ".join([*REGISTRY, *GROUPS])
        raise BenchmarkError(f"unknown benchmark {spec!r}: use one of {known}, or PATH[:TEXT_FIELD[:ID_FIELD]] "
                             "with PATH a JSONL, JSON or Parquet file")
    frame = _read_rows(path)
    text_field = extra[0] if extra else next((f for f in _TEXT_FIELDS if f in frame.columns), "")
    if not text_field:
        raise BenchmarkError(f"{path}: no text field given and none of {', '.join(_TEXT_FIELDS)} present; "
                             f"write {path}:FIELD")
    name = path.name.split(".")[0]
    return _items(frame, path, name, text_field, extra[1] if len(extra) > 1 else None)


def load(spec: str) -> pl.DataFrame:
    """Items of a registered benchmark, a group, or a user file: columns benchmark, item_id, text."""
    names = expand([spec])
    return pl.concat([_load(name) for name in names]) if len(names) > 1 else _load(names[0])


def load_many(specs: list[str]) -> pl.DataFrame:
    names = expand(specs)
    if not names:
        raise BenchmarkError("no benchmark given: pass at least one name (e.g. math500) or a file")
    return pl.concat([_load(name) for name in names])


def describe() -> pl.DataFrame:
    """The registry as a table (name, items, domain, licence, source, file)."""
    return pl.DataFrame([{"name": b.name, "items": _load(b.name).height, "domain": b.domain, "license": b.license,
                          "source": b.source, "file": b.file} for b in REGISTRY.values()])
