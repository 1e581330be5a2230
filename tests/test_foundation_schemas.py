import hashlib

import pyarrow as pa
import pytest

from curate.schemas import (
    PROBLEMS_SCHEMA,
    TRACES_SCHEMA,
    SchemaValidationError,
    problem_ids,
    score_column,
    split_score_column,
    split_valid,
    trace_ids,
    validate,
)


def test_problem_ids_are_stable_content_hashes_insensitive_to_whitespace():
    ids = problem_ids(pa.array(["What is  1+1?\n", "What is 1+1?", "What is 1+2?"]))
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]
    # the same text always gets the same id (a re-run or another source)
    assert ids[0].as_py() == problem_ids(pa.array(["What is 1+1?"]))[0].as_py() == hashlib.sha256(b"problem/v1\x1fWhat is 1+1?").hexdigest()[:16]
    assert len(ids[0].as_py()) == 16


def test_trace_ids_depend_on_teacher_and_text():
    pid = problem_ids(pa.array(["p", "p", "p"]))
    ids = trace_ids(pid, pa.array(["a", "b", "a"]), pa.array(["r", "r", "r"]), pa.array(["x", "x", "y"]))
    assert len(set(ids.to_pylist())) == 3


def test_score_column_naming_rule():
    assert score_column("math", "verdict") == "math__verdict"
    assert split_score_column("minhash__cluster_id") == ("minhash", "cluster_id")
    with pytest.raises(ValueError, match="lower_snake_case"):
        score_column("Math", "verdict")
    with pytest.raises(ValueError):
        score_column("math", "a__b")


def test_split_valid_names_file_row_and_field_and_keeps_good_rows():
    table = pa.table({
        "problem_id": ["a", None, "c", "d"],
        "source": ["s", "s", "s", "s"],
        "domain": ["math", "math", "poetry", "code"],
        "prompt": ["p1", "p2", "p3", "  "],
    })
    good, rejects = split_valid(table, PROBLEMS_SCHEMA, file="in.jsonl", row_numbers=pa.array([10, 11, 12, 13]),
                                allowed={"domain": ["math", "code"]})
    assert good.column("problem_id").to_pylist() == ["a"]
    assert rejects.select(["file", "row", "field"]).to_pylist() == [
        {"file": "in.jsonl", "row": 11, "field": "problem_id"},
        {"file": "in.jsonl", "row": 12, "field": "domain"},
        {"file": "in.jsonl", "row": 13, "field": "prompt"},
    ]
    assert "'poetry' is not one of math, code" in rejects.column("reason")[1].as_py()


def test_wrong_type_is_rejected_per_row():
    table = pa.table({"trace_id": ["t1", "t2"], "prompt_tokens": ["12", "twelve"]})
    schema = pa.schema([pa.field("trace_id", pa.string(), nullable=False), pa.field("prompt_tokens", pa.int32())])
    good, rejects = split_valid(table, schema, file="f.jsonl")
    assert good.column("prompt_tokens").to_pylist() == [12]
    assert good.schema.field("prompt_tokens").type == pa.int32()
    assert rejects.to_pylist()[0]["row"] == 1
    assert rejects.to_pylist()[0]["field"] == "prompt_tokens"
    assert "cannot convert 'twelve'" in rejects.to_pylist()[0]["reason"]


def test_validate_raises_with_a_clear_message_and_missing_columns_fail_the_file():
    with pytest.raises(SchemaValidationError, match=r"f.parquet: row 0, field 'prompt': column is missing"):
        validate(pa.table({"problem_id": ["a"]}), PROBLEMS_SCHEMA, file="f.parquet")


def test_traces_schema_carries_problem_columns_and_is_versioned():
    for name in PROBLEMS_SCHEMA.names:
        assert name in TRACES_SCHEMA.names
    assert TRACES_SCHEMA.metadata[b"curate.schema_version"] == b"1"
