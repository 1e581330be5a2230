import json
import random
import re

import polars as pl
import pyarrow as pa
import pytest

from curate.filters.benchmarks import BenchmarkError, load
from curate.filters.decontaminate import DecontaminateConfig, DecontaminateStage
from curate.testing import run_stage_in_memory

AGAINST = ["math500", "gsm8k", "aime24", "aime25", "amc23", "minerva", "olympiadbench"]


def _edit(text: str, rng: random.Random) -> str:
    """Light edits a contaminated copy typically has: number formatting, an added instruction,
    changed whitespace and LaTeX spelling."""
    text = re.sub(r"\b(\d{4,})\b", lambda m: f"{int(m.group(1)):,}", text)       # 2024 -> 2,024
    text = text.replace("\\frac", "\\dfrac").replace("=", " = \\, ")
    text = re.sub(r"\s+", "  ", text)
    if rng.random() < 0.5:
        text = text.replace("$", "")
    return ("Solve the following problem. " + text +
            "\nPlease reason step by step, and put your final answer within \\boxed{}.")


@pytest.fixture(scope="module")
def clean_problems(shared_data_module):
    rows = [json.loads(line) for line in (shared_data_module / "train" / "gsm8k_train.jsonl").read_text().split("\n")
            if line.strip()]
    return [r["question"] for r in rows[:1500]]


@pytest.fixture(scope="module")
def shared_data_module():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="module")
def injected():
    rng = random.Random(0)
    items = pl.concat([load("math500").sample(100, seed=1), load("aime24"), load("amc23"), load("gsm8k").sample(50, seed=2)])
    return items, [_edit(t, rng) for t in items["text"].to_list()]


def _flags(texts):
    stage = DecontaminateStage(DecontaminateConfig(against=AGAINST))
    out = run_stage_in_memory(stage, pa.table({"prompt": texts})).table
    return pl.from_arrow(out).select("decon__benchmark", "decon__item_id", "decon__score", "decon__method")


def test_clean_real_training_set_has_no_flags(clean_problems):
    flags = _flags(clean_problems)
    assert flags.height == 1500
    assert flags["decon__benchmark"].null_count() == 1500


def test_verbatim_items_are_all_found_with_the_right_item(clean_problems, injected):
    items, _ = injected
    flags = _flags(clean_problems + items["text"].to_list()).slice(len(clean_problems))
    assert flags["decon__benchmark"].to_list() == items["benchmark"].to_list()
    assert flags["decon__item_id"].to_list() == items["item_id"].to_list()


def test_lightly_edited_items_are_found(clean_problems, injected):
    items, edited = injected
    flags = _flags(clean_problems + edited)
    assert flags.slice(0, len(clean_problems))["decon__benchmark"].null_count() == len(clean_problems)
    found = flags.slice(len(clean_problems))
    hits = (found["decon__item_id"] == items["item_id"]).fill_null(False).sum()
    assert hits / items.height >= 0.95, f"recall on edited items {hits}/{items.height}"


def test_short_items_match_as_substrings_and_boilerplate_is_stoplisted(tmp_path):
    bench = tmp_path / "mini.jsonl"
    bench.write_text("\n".join(json.dumps({"q": q}) for q in [
        "Compute $\\dbinom{16}{5}$ exactly now.",  # short: substring match
        "What is the value of x in the equation below when the sum of the roots equals seven?"]))
    stage = DecontaminateStage(DecontaminateConfig(against=[f"{bench}:q"], stop_items=1))
    out = run_stage_in_memory(stage, pa.table({"prompt": ["Please compute $\\binom{16}{5}$ exactly now, thanks.",
                                                          "Unrelated text about apples."]})).table
    assert out.column("decon__method").to_pylist() == ["substring", None]


def test_unknown_benchmark_is_a_clear_error():
    with pytest.raises(BenchmarkError, match="unknown benchmark 'math5000'"):
        load("math5000")
