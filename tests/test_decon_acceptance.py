"""Acceptance: benchmark items injected verbatim and lightly edited into real training problems are
found; a clean real training set raises no flag beyond the listed true overlaps."""

import gzip
import json
import random
import re

import polars as pl
import pyarrow as pa
import pytest

from curate.filters.benchmarks import load_many
from curate.filters.decontaminate import DecontaminateConfig, DecontaminateStage
from curate.testing import run_stage_in_memory
from tests.conftest import SHARED_DATA

COMPETITION = ["gsm8k", "aime24", "aime25", "amc23", "hmmt", "minerva", "olympiadbench"]
ALL_MATH = ["math500", "math_test", *COMPETITION]

# MATH train (rllm_math_train.jsonl.gz, row index) problems that ARE in a competition benchmark
# after normalisation (OlympiadBench reprints them): true overlaps, not false flags.
TRUE_OVERLAPS_COMPETITION = {
    ("math_train", 4520): ("olympiadbench", "2895"),  # a^3 - 15a^2 + 20a - 50 = 0 ... compute a + b
    ("math_train", 6844): ("olympiadbench", "2644"),  # sin^2 4 + sin^2 8 + ... + sin^2 176
}
# MATH train problems sharing their whole setup with a MATH-500 item (MATH reuses a figure or a
# template across its splits and changes only the question): true overlaps of the MATH dataset.
TRUE_OVERLAPS_MATH500 = {
    1253: "test/geometry/283.json", 1321: "test/geometry/283.json", 2629: "test/geometry/283.json",
    5535: "test/number_theory/466.json", 6881: "test/precalculus/807.json", 7278: "test/precalculus/807.json",
    6950: "test/precalculus/1199.json", 6975: "test/precalculus/1199.json", 7337: "test/precalculus/1199.json",
    # "Determine the number of ways to arrange the letters of the word RADII / MADAM / ..." vs "... ELLIPSE":
    # a 12-token template whose last word alone differs (4 of its 5 8-grams match)
    **dict.fromkeys([1773, 1776, 1946, 2039, 2060, 2311, 2502], "test/counting_and_probability/1060.json"),
}


def _jsonl(path, field):
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
    return [json.loads(line)[field] for line in text.split("\n") if line.strip()]


@pytest.fixture(scope="module")
def train():
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent on this machine")
    math = _jsonl(SHARED_DATA / "train" / "rllm_math_train.jsonl.gz", "problem")
    gsm = _jsonl(SHARED_DATA / "train" / "gsm8k_train.jsonl", "question")
    return math, gsm


def _flags(texts, against, **config):
    stage = DecontaminateStage(DecontaminateConfig(against=against, fields=["prompt"], **config))
    out = run_stage_in_memory(stage, pa.table({"prompt": texts})).table
    return pl.from_arrow(out).select("decon__benchmark", "decon__item_id", "decon__score", "decon__method")


def _hits(flags, offset=0):
    rows = flags.with_row_index("row").filter(pl.col("decon__benchmark").is_not_null())
    return {r["row"] - offset: (r["decon__benchmark"], r["decon__item_id"]) for r in rows.iter_rows(named=True)}


def test_clean_real_training_set_raises_only_listed_true_overlaps(train):
    math, gsm = train
    flags = _flags(math + gsm, COMPETITION)
    assert flags.height == len(math) + len(gsm) == 14947
    got = _hits(flags)
    assert {("math_train", row): hit for row, hit in got.items()} == TRUE_OVERLAPS_COMPETITION


def test_math_train_against_math500_flags_only_the_shared_setups(train):
    math, _ = train
    got = _hits(_flags(math, ["math500"]))
    assert got == {row: ("math500", item) for row, item in TRUE_OVERLAPS_MATH500.items()}


def _edit(text: str, rng: random.Random) -> str:
    """Light edits a contaminated copy typically has: number formatting, an added instruction,
    changed whitespace and LaTeX spelling."""
    text = re.sub(r"(?<![\d.])(\d)(\d{3})(?![\d.])", r"\1,\2", text)  # 2024 -> 2,024
    text = re.sub(r"(?<![\d.])(\d{1,3})(?![\d.,])(?=[ .?$])", lambda m: m.group(1) + (".0" if rng.random() < 0.3
                                                                                        else ""), text)
    text = text.replace("\\frac", "\\dfrac").replace("\\le ", "\\leq ").replace("(", "\\left(").replace(")", "\\right)")
    text = text.replace("=", " = \\, ")
    text = re.sub(r"\s+", lambda m: rng.choice(["  ", "\n", " \t "]), text)
    if rng.random() < 0.5:
        text = text.replace("$", "")
    prefix = rng.choice(["Solve the following problem. ", "Problem 7: ", "Q: ", ""])
    return prefix + text + rng.choice(["\nPlease reason step by step, and put your final answer within \\boxed{}.",
                                       "\nShow your work.", ""])


@pytest.fixture(scope="module")
def injected():
    items = load_many(["aime24", "aime25", "amc23", "hmmt"])
    items = pl.concat([items, load_many(["math500"]).sample(120, seed=1), load_many(["gsm8k"]).sample(60, seed=2),
                       load_many(["minerva"]).sample(30, seed=3), load_many(["olympiadbench"]).sample(30, seed=4)])
    rng = random.Random(0)
    return items, [_edit(t, rng) for t in items["text"].to_list()]


def test_verbatim_items_in_real_training_data_are_all_found_with_their_item(train, injected):
    math, gsm = train
    items, _ = injected
    clean = math[:1500] + gsm[:1500]
    rng = random.Random(5)
    positions = sorted(rng.sample(range(len(clean) + items.height), items.height))
    texts, expected = list(clean), {}
    for pos, (bench, item_id, text) in zip(positions, items.iter_rows(), strict=True):
        texts.insert(pos, text)
        expected[pos] = (bench, item_id)
    got = _hits(_flags(texts, ALL_MATH))
    assert len(expected) == items.height == 400
    # every injected item is found and attributed to its benchmark item (MATH-500 items also live
    # in the MATH test set; the earlier-listed benchmark wins)
    assert {p: got.get(p) for p in expected} == expected
    # other flags are MATH train problems sharing a setup with a MATH test problem (no GSM8K row)
    extra = {texts[p] for p in set(got) - set(expected)}
    assert extra <= set(math[:1500]) and len(extra) == 17


def test_lightly_edited_items_are_found(train, injected):
    math, gsm = train
    items, edited = injected
    flags = _flags(gsm[:1000] + edited, ALL_MATH)
    assert flags.slice(0, 1000)["decon__benchmark"].null_count() == 1000
    found = flags.slice(1000)
    hits = sum(1 for (b, i), (eb, ei) in zip(found.select("decon__benchmark", "decon__item_id").rows(),
                                             items.select("benchmark", "item_id").rows(), strict=True)
               if (b, i) == (eb, ei))
    assert hits / items.height >= 0.95, f"recall on edited items {hits}/{items.height}"
