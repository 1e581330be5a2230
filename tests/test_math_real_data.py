"""The math verifier on real public data.

* SkyThought's multi-model AIME 2024 / AMC 2023 outputs (shipped for the demo), each graded by
  the Qwen2.5-Math grader (`score`): we agree on all but 9 of 1,080 traces, and each of the 9 is
  in tests/fixtures/math_disagreements.jsonl with which side is right and why.
* DeepSeek-R1's AIME 2024 traces annotated by Thoughtology: the answer sits inside the thinking,
  among annotation tags; expected verdicts in tests/fixtures/math_thoughtology_r1.jsonl.
* MATH-500's reference solutions (shipped benchmark): every solution verifies against its own
  answer, and against the next problem's answer only where the two answers are equal.
"""

import difflib
import gzip
import json
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate.generators.anatomy import split_frame
from curate.generators.importer import ImportConfig, ImportTracesStage
from curate.runner import run_stage
from curate.testing import run_stage_in_memory
from curate.verifiers.math import MathVerifyConfig, MathVerifyStage
from tests.conftest import DEMO_DATA, REPO, SHARED_DATA

FIXTURES = Path(__file__).parent / "fixtures"
BENCHMARKS = REPO / "curate" / "data" / "benchmarks"


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f.read().split("\n") if line]


def _skythought_files() -> list[str]:
    for folder in (DEMO_DATA, SHARED_DATA / "traces"):
        files = sorted(folder.glob("skythought_*_multimodel_outputs.jsonl.gz"))
        if len(files) == 2:
            return [str(p) for p in files]
    pytest.skip(f"SkyThought graded traces found neither in {DEMO_DATA} nor in {SHARED_DATA / 'traces'}")


def test_agreement_with_the_graders_labels_every_disagreement_explained(tmp_path):
    cfg = ImportConfig(
        paths=_skythought_files(),
        columns={"prompt": "question", "response": "response", "teacher": "model", "reference_answer": "gt",
                 "source": "benchmark"},
        keep=["score", "pred", "idx"], domain="math",
    )
    run_stage(ImportTracesStage(cfg), out_dir=tmp_path / "01-import", progress=False)
    run_stage(MathVerifyStage(MathVerifyConfig(workers=2)), input_dir=tmp_path / "01-import",
              out_dir=tmp_path / "02-math", progress=False)
    df = pl.read_parquet(tmp_path / "02-math" / "part-*.parquet").with_columns(
        pl.col("trace_metadata").str.json_decode(pl.Struct({"score": pl.Boolean, "idx": pl.Int64})).alias("m")
    ).unnest("m")
    assert df.height == 1080
    disagree = df.filter((pl.col("math__verdict") == "correct") != pl.col("score"))
    got = {(r["source"], r["idx"], r["teacher"]): (r["reference_answer"], r["score"], r["math__pred"], r["math__verdict"])
           for r in disagree.iter_rows(named=True)}
    explained = {(r["benchmark"], r["idx"], r["teacher"]): (r["reference"], r["grader_score"], r["pred"], r["verdict"])
                 for r in _jsonl(FIXTURES / "math_disagreements.jsonl")}
    assert got == explained
    # Every verdict is typed; the degenerate and truncated outputs are unparseable, not "0".
    assert set(df["math__verdict"].unique()) <= {"correct", "incorrect", "unparseable_prediction"}
    assert (df["math__verdict"] == "correct").sum() == 421


def test_fixture_of_disagreements_says_who_is_right():
    rows = _jsonl(FIXTURES / "math_disagreements.jsonl")
    assert {r["category"] for r in rows} == {"truncated", "no_final_statement", "grader_extraction_error"}
    assert all(r["right"] in ("ours", "grader") and len(r["why"]) > 40 for r in rows)


def test_r1_traces_with_the_answer_inside_the_thinking(shared_data):
    """The text after </think> is empty: the answer is found in the reasoning's tail, through
    the annotation tags, with the JSON-escape damage (backspace + "oxed") repaired."""
    r1 = _jsonl(shared_data / "traces" / "thoughtology_deepseek_r1_aime24_annotated.jsonl.gz")
    expected = {r["id"]: r for r in _jsonl(FIXTURES / "math_thoughtology_r1.jsonl")}
    # References: the gold answers of AIME 2024, matched to each trace by its question text (the
    # two copies differ in LaTeX formatting: \\tfrac vs \\frac, $...$ vs \\(...\\)).
    def key(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())[:200]

    gold = [(key(g["problem"]), str(g["answer"])) for g in _jsonl(BENCHMARKS / "aime24.jsonl.gz")]
    refs = []
    for row in r1:
        ratio, answer = max((difflib.SequenceMatcher(None, key(row["question"]), k).ratio(), a) for k, a in gold)
        assert ratio > 0.85, row["id"]
        refs.append(answer)
    assert refs == [expected[row["id"]]["reference"] for row in r1]
    tags = r"</?(?:DEFINE|BLOOM|CYCLE|FINAL|v)>"
    frame = split_frame(pl.DataFrame({"response": [r["answer"] for r in r1]}), "response").with_columns(
        pl.col("reasoning").str.replace_all(tags, ""), pl.Series("reference_answer", refs), pl.lit("math").alias("domain"))
    assert frame["answer"].str.strip_chars().str.len_chars().fill_null(0).max() <= 3  # nothing after </think>
    out = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(workers=2)), frame.to_arrow()).table.to_pylist()
    got = [(row["id"], o["math__pred"], o["math__verdict"]) for row, o in zip(r1, out, strict=True)]
    assert got == [(row["id"], expected[row["id"]]["pred"], expected[row["id"]]["verdict"]) for row in r1]
    assert sum(v == "correct" for _, _, v in got) == 20


def _math500_pairs() -> tuple[pa.Table, list[str]]:
    rows = _jsonl(BENCHMARKS / "math500.jsonl.gz")
    n = len(rows)
    refs = [r["answer"] for r in rows] + [rows[(i + 1) % n]["answer"] for i in range(n)]
    kinds = ["own"] * n + ["next"] * n
    table = pa.table({"reference_answer": refs, "answer": [r["solution"] for r in rows] * 2,
                      "reasoning": [None] * (2 * n), "domain": ["math"] * (2 * n)})
    return table, [f"{k}:{r['unique_id']}" for k, r in zip(kinds, rows * 2, strict=True)]


# Neighbouring MATH-500 problems whose answers are equal: x=5 and 5, 7 and 7, 3 and 3.
EQUAL_NEIGHBOUR_ANSWERS = {"next:test/algebra/1837.json", "next:test/number_theory/978.json",
                           "next:test/number_theory/928.json"}


def test_math500_reference_solutions_verify_and_shortcuts_agree_with_sympy():
    table, ids = _math500_pairs()
    fast = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(workers=2)), table).table
    verdicts = fast.column("math__verdict").to_pylist()
    correct = {i for i, v in zip(ids, verdicts, strict=True) if v == "correct"}
    assert {i for i in ids if i.startswith("own:")} <= correct
    assert correct - {i for i in ids if i.startswith("own:")} == EQUAL_NEIGHBOUR_ANSWERS
    # The cheap shortcuts decide most pairs; on a slice, math-verify alone reaches the same verdicts.
    sample = list(range(0, 200)) + list(range(500, 700))
    slow = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(workers=2, shortcuts=False)), table.take(sample)).table
    assert slow.column("math__verdict").to_pylist() == [verdicts[i] for i in sample]
    assert set(slow.column("math__method").to_pylist()) == {"math_verify"}
