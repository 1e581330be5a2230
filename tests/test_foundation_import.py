import json

import polars as pl
import pytest

from curate.generators.importer import ImportConfig, ImportProblemsStage, ImportTracesStage
from curate.runner import run_stage
from tests.conftest import write_jsonl


def _run(tmp_path, config, stage_cls=ImportTracesStage):
    manifest = run_stage(stage_cls(ImportConfig(**config)), out_dir=tmp_path / "01-import", progress=False)
    frame = pl.read_parquet(tmp_path / "01-import" / "part-*.parquet") if manifest.rows_out else None
    rejects = pl.read_parquet(tmp_path / "01-import" / "_rejects.parquet")
    return manifest, frame, rejects


def test_messages_preset_with_separate_reasoning_content(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief.", "reasoning_content": None},
                      {"role": "user", "content": "What is 2+2?", "reasoning_content": None},
                      {"role": "assistant", "content": "\\boxed{4}", "reasoning_content": "2+2=4"}]},
        {"messages": [{"role": "user", "content": "What is 3+3?", "reasoning_content": None},
                      {"role": "assistant", "content": "<think>3+3</think>6", "reasoning_content": None}]},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    manifest, frame, _ = _run(tmp_path, {"paths": [str(path)], "preset": "messages", "teacher": "T", "domain": "math"})
    assert manifest.rows_out == 2
    assert frame.select("prompt", "reasoning", "answer", "think_closed", "teacher", "backend").rows() == [
        ("What is 2+2?", "2+2=4", "\\boxed{4}", True, "T", "import"),
        ("What is 3+3?", "3+3", "6", True, "T", "import"),
    ]


def test_sharegpt_openthoughts_and_am_thinking_presets(tmp_path):
    ot = [{"system": "sys", "conversations": [
        {"from": "user", "value": "Q1"},
        {"from": "assistant", "value": "<|begin_of_thought|>think<|end_of_thought|>\n\n<|begin_of_solution|>A1<|end_of_solution|>"}]}]
    am = [{"messages": [
        {"role": "user", "content": "Q2", "info": {"reference_answer": "7", "think_content": None, "answer_content": None}},
        {"role": "assistant", "content": "<think>r</think>\n<answer>seven</answer>",
         "info": {"reference_answer": None, "think_content": "r", "answer_content": "seven"}}]}]
    p1 = write_jsonl(tmp_path / "ot.jsonl", ot)
    p2 = write_jsonl(tmp_path / "am.jsonl.gz", am)
    _, f1, _ = _run(tmp_path / "a", {"paths": [str(p1)], "preset": "openthoughts", "teacher": "R1", "domain": "math"})
    assert f1.select("prompt", "reasoning", "answer").rows() == [("Q1", "think", "A1")]
    _, f2, _ = _run(tmp_path / "b", {"paths": [str(p2)], "teacher": "AM", "domain": "math"})  # auto-detected
    assert f2.select("prompt", "reasoning", "answer", "reference_answer").rows() == [("Q2", "r", "seven", "7")]


def test_malformed_rows_go_to_rejects_with_file_row_and_field(tmp_path):
    rows = [{"q": f"question {i}", "r": f"<think>t{i}</think>a{i}", "model": "M", "tok": i} for i in range(6)]
    rows[2] = {"q": None, "r": "x", "model": "M", "tok": 1}  # missing required prompt
    rows[4]["tok"] = "many"  # wrong type
    path = write_jsonl(tmp_path / "bad.jsonl", rows, raw_lines={3: "{not json"})
    manifest, frame, rejects = _run(tmp_path, {
        "paths": [str(path)], "columns": {"prompt": "q", "response": "r", "teacher": "model", "completion_tokens": "tok"},
        "domain": "math"})
    assert frame["prompt"].to_list() == ["question 0", "question 1", "question 5"]
    got = sorted(rejects.select("row", "field").rows())
    assert got == [(2, "prompt"), (3, "<line>"), (4, "completion_tokens")]
    assert all(f == str(path) for f in rejects["file"].to_list())
    reasons = dict(rejects.select("row", "reason").rows())
    assert reasons[3].startswith("bad JSON")
    assert "cannot convert 'many'" in reasons[4]
    assert manifest.rows_in == 6 and manifest.rows_out == 3 and manifest.rows_rejected == 3
    assert manifest.counts["rejected:prompt"] == 1 and manifest.counts["rejected:bad_json"] == 1


def test_missing_column_everywhere_rejects_every_row_naming_the_field(tmp_path):
    path = write_jsonl(tmp_path / "nocol.jsonl", [{"question": "a", "model": "m"}, {"question": "b", "model": "m"}])
    manifest, _, rejects = _run(tmp_path, {"paths": [str(path)], "columns": {"prompt": "question", "response": "resp",
                                                                          "teacher": "model"}, "domain": "math"})
    assert manifest.rows_out == 0
    assert rejects.select("row", "field").rows() == [(0, "trace_id"), (1, "trace_id")]


def test_identical_ids_are_deduplicated(tmp_path):
    row = {"prompt": "P", "response": "<think>a</think>b", "teacher": "t"}
    path = write_jsonl(tmp_path / "dup.jsonl", [row, row, {**row, "teacher": "u"}])
    manifest, frame, _ = _run(tmp_path, {"paths": [str(path)], "domain": "math"})
    assert frame["teacher"].to_list() == ["t", "u"]
    assert manifest.counts["duplicate_trace_id"] == 1


def test_parquet_and_datasets_folder_inputs(tmp_path):
    import datasets

    rows = [{"prompt": f"P{i}", "response": f"A{i}", "teacher": "t"} for i in range(5)]
    pl.DataFrame(rows).write_parquet(tmp_path / "in.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hfds"))
    _, f1, _ = _run(tmp_path / "a", {"paths": [str(tmp_path / "in.parquet")], "domain": "general"})
    _, f2, _ = _run(tmp_path / "b", {"paths": [str(tmp_path / "hfds")], "domain": "general"})
    assert f1["answer"].to_list() == f2["answer"].to_list() == [f"A{i}" for i in range(5)]
    assert f1["trace_id"].to_list() == f2["trace_id"].to_list()


def test_import_problems_keeps_metadata_and_dedups(tmp_path):
    rows = [{"problem": "Find x.", "answer": "3", "level": 5}, {"problem": "Find  x.", "answer": "3", "level": 5},
            {"problem": "Find y.", "answer": "4", "level": 2}]
    path = write_jsonl(tmp_path / "p.json", rows)
    path.write_text(json.dumps(rows))  # a JSON array file
    manifest, frame, _ = _run(tmp_path, {"paths": [str(path)], "columns": {"prompt": "problem", "reference_answer": "answer"},
                                         "keep": ["level"], "domain": "math", "license": "mit"}, ImportProblemsStage)
    assert frame.select("prompt", "reference_answer", "metadata", "license").rows() == [
        ("Find x.", "3", '{"level":5}', "mit"), ("Find y.", "4", '{"level":2}', "mit")]
    assert manifest.counts["duplicate_problem_id"] == 1


def test_unknown_preset_or_target_is_a_clear_config_error():
    with pytest.raises(ValueError, match="unknown preset"):
        ImportConfig(paths=["x"], preset="nope")
    with pytest.raises(ValueError, match="unknown target column"):
        ImportConfig(paths=["x"], columns={"promt": "q"})
