"""The math verifier stage: typed verdicts, guard rails, time limits, the worker pool, the runner."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.executors import LocalExecutor
from curate.runner import run_stage
from curate.schemas.tables import TRACES_SCHEMA, conform
from curate.testing import run_stage_in_memory
from curate.verifiers.math import MathVerifyConfig, MathVerifyStage
from curate.verifiers.math_compare import Comparer, serve
from curate.verifiers.math_faults import broken_serve, hostile_serve
from curate.verifiers.math_pool import MathVerifyPool

FIXTURES = Path(__file__).parent / "fixtures"
GUARD_RAILS = [json.loads(line) for line in (FIXTURES / "math_guard_rails.jsonl").read_text().splitlines()]


def _table(rows, domain="math"):
    return pa.table({
        "reference_answer": [r[0] for r in rows],
        "answer": [r[1] for r in rows],
        "reasoning": [r[2] if len(r) > 2 else None for r in rows],
        "domain": [domain] * len(rows),
    })


def _verify(rows, columns=("pred", "verdict"), **cfg):
    cfg.setdefault("workers", 1)
    out = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(**cfg)), _table(rows)).table
    return [tuple(r[f"math__{c}"] for c in columns) for r in out.to_pylist()]


def test_typed_verdicts_and_methods():
    assert _verify([
        ("\\frac{1}{2}", "So the answer is $\\boxed{0.5}$."),
        ("204", "The total is \\boxed{205}."),
        ("204", "The total is \\boxed{204.0}."),
        (None, "\\boxed{3}"),
        ("  ", "\\boxed{3}"),
        ("7", "I could not finish."),
        ("C", "The answer is (C)."),
        ("C", "The answer is (B)."),
        ("C", "\\boxed{17}"),
        ("\\text{Monday}", "\\boxed{\\text{Tuesday}}"),
    ], columns=("pred", "verdict", "method", "source")) == [
        ("0.5", "correct", "math_verify", "answer:boxed"),
        ("205", "incorrect", "integer", "answer:boxed"),
        ("204.0", "correct", "exact_match", "answer:boxed"),
        (None, "no_reference", "none", None),
        (None, "no_reference", "none", None),
        (None, "unparseable_prediction", "none", None),
        ("C", "correct", "choice_letter", "answer:choice"),
        ("B", "incorrect", "choice_letter", "answer:choice"),
        ("17", "unparseable_prediction", "choice_letter", "answer:boxed"),
        ("\\text{Tuesday}", "incorrect", "math_verify", "answer:boxed"),
    ]


def test_unparseable_reference_is_its_own_verdict():
    assert _verify([("\\begin{pmatrix", "\\boxed{3}")], columns=("verdict",)) == [("unparseable_reference",)]


@pytest.mark.parametrize("shortcuts", [True, False])
@pytest.mark.parametrize("case", GUARD_RAILS, ids=[f"#{c['issue']}-{c['case']}" for c in GUARD_RAILS])
def test_guard_rails_for_known_math_verify_misfires(case, shortcuts):
    """tests/fixtures/math_guard_rails.jsonl: one row per misfire (math-verify issues #57, #60, #70,
    #76), with what math-verify alone says and why the guarded verdict is right. The same verdict
    with and without the cheap shortcuts, so the sympy path is exercised too."""
    got = _verify([(case["reference"], case["answer"])], shortcuts=shortcuts)
    assert got == [(case["expected_pred"], case["expected_verdict"])], case["why"]


def test_guard_rail_fixtures_show_real_misfires():
    """Math-verify called the plain way (`verify(parse(reference), parse(answer))`) gets these
    wrong; if a new math-verify release fixes one, this says which guard may go."""
    from math_verify import parse, verify

    raw = [bool(verify(parse(c["reference"]), parse(c["answer"]))) for c in GUARD_RAILS]
    assert raw == [c["raw_math_verify"] for c in GUARD_RAILS]
    misfires = {c["issue"] for c in GUARD_RAILS if c["raw_math_verify"] != (c["expected_verdict"] == "correct")}
    assert misfires == {57, 60, 70, 76}


def test_comparer_parses_each_reference_once():
    comparer = Comparer(timeout_s=5)
    calls = []
    parse = comparer.parse
    comparer.parse = lambda text: calls.append(text) or parse(text)
    for pred in ("1/2", "0.5", "\\frac{2}{4}", "3"):
        comparer.compare(pred, "\\frac{1}{2}")
    assert [c for c in calls if "frac{1}{2}" in c] == ["$\\frac{1}{2}$"]


def test_alarm_timeout_is_a_verdict_not_a_crash():
    # Expanding two 3000th powers takes sympy minutes; a plain comparison takes milliseconds.
    rows = [("(x+2)^{3000}", "\\boxed{(x+1)^{3000}}"), ("3", "\\boxed{3}"), ("(x+1)^{2}", "\\boxed{x^2+2x+1}")]
    assert _verify(rows, columns=("verdict", "method"), timeout_s=3, workers=2) == [
        ("timeout", "alarm"), ("correct", "exact_match"), ("correct", "math_verify")]


# -- the pool: workers that ignore the alarm are killed, workers that die are replaced ---------


def test_pool_kills_a_stuck_worker_and_carries_on():
    pairs = [("1", "1"), ("HANG", "2"), ("x", "x"), ("2", "3")] + [(str(i), str(i)) for i in range(20)]
    with MathVerifyPool(2, timeout_s=5, grace_s=0.5, chunk_size=4, target=hostile_serve) as pool:
        results = pool.run(pairs)
        assert pool.killed == 1
        # The pool still works after the kill.
        assert pool.run([("5", "5")]) == [("correct", "math_verify")]
    assert results[:4] == [("correct", "math_verify"), ("timeout", "killed"), ("correct", "math_verify"),
                           ("incorrect", "math_verify")]
    assert results[4:] == [("correct", "math_verify")] * 20


def test_pool_retries_once_then_records_an_error_when_a_worker_dies():
    with MathVerifyPool(1, timeout_s=2, chunk_size=3, target=hostile_serve) as pool:
        results = pool.run([("1", "1"), ("DIE", "2"), ("3", "4")])
        assert pool.crashed == 2
    assert results == [("correct", "math_verify"), ("error", "worker_died"), ("incorrect", "math_verify")]


def test_a_worker_that_cannot_start_is_an_error_not_a_respawn_loop():
    with pytest.raises(RuntimeError, match="exited while starting"), \
            MathVerifyPool(1, timeout_s=1, target=broken_serve) as pool:
        pool.run([("1", "1")])


def test_pool_leaves_no_process_behind():
    pool = MathVerifyPool(2, timeout_s=1)
    pool.run([("1", "1"), ("2", "2")])
    processes = [w.process for w in pool._workers]
    pool.close()
    assert all(not p.is_alive() for p in processes)


def test_worker_entry_point_is_the_real_one():
    assert MathVerifyPool(1, timeout_s=1).target is serve


# -- stage contract --------------------------------------------------------------------------


def test_only_configured_domains_are_verified_and_no_row_is_dropped():
    table = pa.table({
        "reference_answer": ["1", "1", "1"],
        "answer": ["\\boxed{1}"] * 3,
        "reasoning": [None] * 3,
        "domain": ["code", "math", None],
    })
    out = run_stage_in_memory(MathVerifyStage(MathVerifyConfig(workers=1)), table)
    assert out.table.num_rows == 3
    assert out.table.column("math__verdict").to_pylist() == ["no_reference", "correct", "no_reference"]
    assert out.table.column("math__pred").to_pylist() == [None, "1", None]
    assert out.counts["verdict:correct"] == 1 and out.counts["verdict:no_reference"] == 2


def test_config_is_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifyConfig(timeout_s=0)
    with pytest.raises(ValueError, match="extra"):
        MathVerifyConfig(timeout=5)


def test_stage_declares_its_contract():
    stage = MathVerifyStage(MathVerifyConfig(workers=2))
    assert (stage.name, stage.cli, stage.score_namespace) == ("verify_math", ("verify", "math"), "math")
    assert [f.name for f in stage.output_fields()] == ["math__pred", "math__verdict", "math__method", "math__source"]
    # The stage fans out itself: the runner runs one copy holding all the cores it uses.
    assert (stage.resources.cpus, stage.resources.max_workers) == (2, 1)
    assert LocalExecutor(workers=None).workers_for(stage, n_units=8) == 1


def test_end_to_end_through_the_runner(tmp_path):
    rows = [("\\frac{1}{2}", "\\boxed{0.5}"), ("7", "\\boxed{8}"), (None, "x")] * 50
    table = _table(rows).append_column("trace_id", pa.array([f"t{i}" for i in range(150)]))
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(conform(table, TRACES_SCHEMA), source / "part-00000.parquet", row_group_size=64)
    manifest = run_stage(MathVerifyStage(MathVerifyConfig(workers=2)), input_dir=source, out_dir=tmp_path / "out",
                         executor=LocalExecutor(), progress=False)
    out = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet")))
    assert manifest.rows_out == out.num_rows == 150
    assert manifest.workers == 1
    assert out.column("math__verdict").to_pylist() == ["correct", "incorrect", "no_reference"] * 50
    assert manifest.counts["verdict:correct"] == 50
    assert manifest.summary["verdicts"]["incorrect"] == 50
