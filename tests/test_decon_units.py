"""Decontamination parts: normalisation, the ladder, short items, stop-lists, numbers, fields,
user files, the registry's checks, the report, and a run through the runner."""

import gzip
import json

import polars as pl
import pyarrow as pa
import pytest

from curate.filters import benchmarks
from curate.filters.benchmarks import BenchmarkError, load, load_many
from curate.filters.decontaminate import DecontaminateConfig, DecontaminateStage, contamination_report
from curate.filters.ngrams import HashSet, Windows, token_strings, tokenise
from curate.testing import run_stage_in_memory

ITEMS = [
    # 13-gram tier (>= 40 tokens)
    "Let $ABCD$ be a square with side length $12$. Points $E$ and $F$ lie on sides $AB$ and $BC$ so that "
    "the triangle $DEF$ is equilateral. The area of triangle $DEF$ can be written as $a\\sqrt{b} - c$ where "
    "$a$, $b$, $c$ are positive integers. Find $a+b+c$.",
    # 8-gram tier (10-39 tokens)
    "Find the number of ordered pairs $(m,n)$ of positive integers with $m^2 n = 20^{20}$.",
    # short: substring (4-9 tokens)
    "Compute $\\dbinom{16}{5}$ exactly.",
    # too short: exact only
    "Evaluate $7!$.",
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"q": t, "key": f"k{i}"}) for i, t in enumerate(ITEMS)) + "\n")
    return f"{path}:q:key"


def flags(spec, texts, field="prompt", **config):
    cfg = DecontaminateConfig(against=[spec], fields=[field], **config)
    out = run_stage_in_memory(DecontaminateStage(cfg), pa.table({field: texts}))
    return pl.from_arrow(out.table).select("decon__item_id", "decon__method", "decon__score", "decon__field").rows()


def test_normalisation_makes_formatting_edits_agree():
    texts = pl.Series(["Compute $\\dfrac{1,000}{2.50} \\le x^{2}$ and \\left( 12.0 \\right) \\text{ cm} 1{,}000{,}000",
                       "compute \\frac{1000}{2.5} \\leq x^2 and (12) cm 1000000"])
    a, b = token_strings(texts).to_pylist()
    assert a == b == ["compute", "frac", "1000", "2", "5", "leq", "x", "2", "and", "12", "cm", "1000000"]
    assert token_strings(pl.Series(["(t+1)/t", "t + 1/t", "25x"])).to_pylist() == [
        ["t", "+", "1", "/", "t"], ["t", "+", "1", "/", "t"], ["25", "x"]]


def test_window_hashes_do_not_depend_on_position_and_hashset_membership():
    tokens = tokenise(pl.Series(["a b c d e", "x a b c y"]))
    rows, hashes = Windows(tokens).ngrams(3)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert hashes[0] == hashes[4]  # "a b c" in both rows
    assert len(set(hashes.tolist())) == 5
    members = HashSet(hashes[:3])
    assert members.contains(hashes).tolist() == [True, True, True, False, True, False]


def test_ladder_methods_and_scores(bench):
    got = flags(bench, [
        "Solve: " + ITEMS[0] + " Think step by step.",          # long item inside added text
        "Find the number of ordered pairs (m, n) of positive integers with m^2 n = 20^{20}. Hint: factor",
        "Please compute \\binom{16}{5} exactly, then explain.",  # short item as a substring
        "evaluate 7!",                                          # exact after normalisation
        "Evaluate 7! and then 8!",                              # too short for a substring match
        "An unrelated question about apples and oranges.",
    ])
    assert got == [("k0", "ngram13", 1.0, "prompt"), ("k1", "ngram8", 1.0, "prompt"),
                   ("k2", "substring", 1.0, "prompt"), ("k3", "exact", 1.0, "prompt"),
                   (None, None, None, None), (None, None, None, None)]


def test_partial_copy_scores_coverage_and_threshold_applies(bench):
    words = ITEMS[0].split()
    half = " ".join(words[: len(words) * 2 // 3])
    assert flags(bench, [half], min_number_share=0.0)[0][0] is None  # coverage below the default 0.8
    item, method, score, _ = flags(bench, [half], threshold=0.4, min_number_share=0.0)[0]
    assert (item, method) == ("k0", "ngram13") and 0.4 <= score < 0.8


def test_numbers_must_agree(bench):
    other = ITEMS[1].replace("20^{20}", "30^{30}")
    assert flags(bench, [other], threshold=0.3)[0][0] is None
    assert flags(bench, [other], threshold=0.3, min_number_share=0.0)[0][0] == "k1"


def test_substring_matches_only_in_configured_fields(bench):
    text = "We first compute \\binom{16}{5} exactly and get 4368."
    assert flags(bench, [text], field="reasoning")[0][0] is None
    assert flags(bench, [text], field="reasoning", substring_fields=["prompt", "reasoning"])[0][:2] == (
        "k2", "substring")


def test_benchmark_stoplist_removes_boilerplate(tmp_path):
    boiler = "Enter your answer in the form of an ordered pair with both coordinates simplified as far as possible"
    items = [f"Problem {i}: the point moves to position {i} squared. {boiler}." for i in range(6)]
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(json.dumps({"problem": t}) for t in items))
    training = f"Where does the car stop after 10 minutes? {boiler}."
    assert flags(str(path), [training], stop_items=5)[0][0] is None
    assert flags(str(path), [training], stop_items=50, threshold=0.3, min_number_share=0.0)[0][1] == "ngram8"


def test_corpus_stoplist_drops_ngrams_common_in_the_training_set(tmp_path):
    phrase = "let x y and z be positive real numbers such that their sum equals one and their product is small"
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"problem": f"{phrase}. Find the minimum of the expression."}))
    corpus = [f"{phrase}. Variant {i} asks for something else entirely, involving {i} apples." for i in range(60)]
    assert flags(str(path), corpus, threshold=0.6, corpus_stop_min=1000)[0][0] == "0"
    assert all(r[0] is None for r in flags(str(path), corpus, threshold=0.6, corpus_stop_min=50))


def test_user_files_jsonl_json_parquet_and_errors(tmp_path):
    rows = [{"problem": "What is one plus one", "id": "a"}, {"problem": "What is two plus two", "id": "b"}]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "y.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    pl.DataFrame(rows).write_parquet(tmp_path / "z.parquet")
    for name in ("x.json", "y.jsonl.gz", "z.parquet"):
        got = load(f"{tmp_path / name}:problem:id")
        assert got.rows() == [(name.split(".")[0], "a", rows[0]["problem"]), (name.split(".")[0], "b", rows[1]["problem"])]
    assert load(str(tmp_path / "x.json"))["item_id"].to_list() == ["0", "1"]  # text field found by name
    with pytest.raises(BenchmarkError, match="field 'question' not found"):
        load(f"{tmp_path / 'x.json'}:question")
    (tmp_path / "bad.jsonl").write_text('{"problem": "ok"}\n{"problem": null}\n')
    with pytest.raises(BenchmarkError, match=r"row 1, field 'problem'"):
        load(str(tmp_path / "bad.jsonl"))
    with pytest.raises(BenchmarkError, match="unknown benchmark 'math5000'"):
        load("math5000")


def test_registry_checks_sha256_and_groups(tmp_path, monkeypatch):
    assert load("aime24").height == 30 and load("amc23").height == 40 and load("math500").height == 500
    assert benchmarks.expand(["aime", "aime24", "hmmt"]) == ["aime24", "aime25", "hmmt_feb24", "hmmt_feb25"]
    assert set(load_many(["code"])["benchmark"].unique()) == {"humaneval", "mbpp", "livecodebench"}
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "amc23.jsonl.gz").write_bytes(gzip.compress(b'{"problem": "tampered", "id": 1}\n'))
    (fake / "SHA256SUMS").write_text((benchmarks.DATA / "SHA256SUMS").read_text())
    monkeypatch.setattr(benchmarks, "DATA", fake)
    benchmarks._load.cache_clear()
    try:
        with pytest.raises(BenchmarkError, match="does not match its sha256"):
            load("amc23")
    finally:
        benchmarks._load.cache_clear()


def test_best_field_wins_and_report_through_the_runner(tmp_path, bench):
    from curate.executors import make_executor
    from curate.runner import run_stage

    rows = pl.DataFrame({
        "trace_id": ["t1", "t2", "t3", "t4"], "problem_id": ["p1", "p1", "p2", "p3"],
        "prompt": [ITEMS[1], ITEMS[1], "A clean question about trains leaving stations.", "Another clean one."],
        "reasoning": ["", "Restating: " + ITEMS[1], "I recall: " + ITEMS[0], "nothing"],
    })
    source = tmp_path / "in"
    source.mkdir()
    rows.write_parquet(source / "part-00000.parquet")
    stage = DecontaminateStage(DecontaminateConfig(against=[bench], fields=["prompt", "reasoning"]))
    manifest = run_stage(stage, out_dir=tmp_path / "out", input_dir=source, executor=make_executor("inprocess"),
                         progress=False)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet").sort("trace_id")
    assert out.select("decon__item_id", "decon__method", "decon__field").rows() == [
        ("k1", "exact", "prompt"), ("k1", "exact", "prompt"), ("k0", "ngram13", "reasoning"), (None, None, None)]
    assert manifest.summary["hits"] == {"mine": 3} and manifest.summary["fields"] == {"prompt": 2, "reasoning": 1}
    report = pl.from_arrow(contamination_report(tmp_path / "out"))
    assert report.select("field", "item_id", "method", "rank", "rows").rows() == [
        ("reasoning", "k0", "ngram13", 1, 1), ("prompt", "k1", "exact", 1, 2), ("reasoning", "k1", "ngram8", 1, 1)]
    assert report.filter(pl.col("item_id") == "k0")["benchmark_text"][0] == ITEMS[0]
    assert report.filter(pl.col("item_id") == "k0")["text"][0] == "I recall: " + ITEMS[0]


def test_embedding_pass_catches_a_paraphrase_the_ngrams_miss():
    paraphrase = ("Every morning Aya goes for a 9-kilometer-long walk and stops at a coffee shop afterwards. Walking "
                  "at s km/h, the walk takes 4 hours including t minutes in the coffee shop; at s+2 km/h it takes 2 "
                  "hours 24 minutes including t minutes. If she walks at s+1/2 km/h, how many minutes does the walk "
                  "take, including the t minutes spent in the coffee shop?")
    texts = [paraphrase, "How many apples are in a basket of ten apples?"]
    assert flags("aime24", texts)[0][0] is None  # rewritten: too few 13-grams survive
    got = flags("aime24", texts, embedding_threshold=0.9)
    assert [(r[0], r[1]) for r in got] == [("60", "embedding"), (None, None)]
    assert got[0][2] > 0.9
