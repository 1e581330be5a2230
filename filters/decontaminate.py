"""`curate decontaminate --against math500 --against aime24 ...`: benchmark overlap per row.

* Text on both sides is normalised (NFKC, case, LaTeX spacing, `\\dfrac`, thousands separators,
  `12.0` -> `12`) and tokenised into words, numbers and LaTeX command names.
* An n-gram ladder: a benchmark item of L tokens is indexed with n = clamp(L // 3, 5, 13), so long
  items use long n-grams (no chance hits) and shorter ones still produce several n-grams. Items
  under `min_ngram_tokens` tokens are matched as an exact normalised substring instead.
* A stop-list drops n-grams found in `stop_items` or more distinct benchmark items (formula and
  template boilerplate such as "what is the value of"), which otherwise flag unrelated problems.
* A row's score for an item is the share of the item's n-grams found in the row; the best item
  above `threshold` is reported.

Columns: decon__benchmark, decon__item_id, decon__score, decon__method, decon__field (null when clean).
Vectorised: hashed n-grams joined in polars; no Python loop per row.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.filters import benchmarks
from curate.filters.text_norm import normalise_for_match
from curate.stage import BatchResult, Stage, StageConfig

TOKEN = r"[a-z0-9]+|\\[a-z]+"
# 0, 1 and 2 fill templates ("0 <= theta < 2 pi"); only other numbers tell two problems apart
_DISTINCTIVE_NUMBER = r"^(?:[3-9]|[0-9]{2,})$"


class DecontaminateConfig(StageConfig):
    against: list[str] = Field(["math500", "aime24", "aime25", "amc23", "gsm8k"],
                               description="Benchmarks (registry names or PATH.jsonl:FIELD).")
    fields: list[str] = Field(["prompt"], description="Row text checked: prompt, answer, reasoning.")
    threshold: float = Field(0.5, description="Share of an item's n-grams a row must contain.")
    min_ngram_tokens: int = Field(10, description="Items shorter than this are matched as substrings.")
    min_substring_chars: int = Field(20, description="Shorter normalised items are too generic to match.")
    stop_items: int = Field(5, description="n-grams in this many benchmark items or more are boilerplate.")
    min_number_share: float = Field(0.8, description="Share of an item's numbers a row must contain: MATH-style "
                                    "templates reuse the words with other numbers, and those are different problems.")


def prepare(expr: pl.Expr) -> pl.Expr:
    return (
        normalise_for_match(expr)
        .str.replace_all(r"(\d),(\d{3})", "$1$2")
        .str.replace_all(r"(\d)\.0+\b", "$1")
    )


def ngram_hashes(frame: pl.DataFrame, key: str, n_col: str) -> pl.DataFrame:
    """(key, h) for every n-gram of `tokens`, n taken per row from `n_col`."""
    exploded = frame.select(key, n_col, "tokens").explode("tokens").with_columns(
        pl.int_range(pl.len()).over(key).alias("_pos"))
    out = []
    for n in exploded[n_col].unique().to_list():
        part = exploded.filter(pl.col(n_col) == n)
        grams = part.with_columns(
            pl.concat_str([pl.col("tokens").shift(-i).over(key) for i in range(n)], separator=" ").alias("_g"))
        out.append(grams.filter(pl.col("_g").is_not_null()).select(key, pl.lit(n).alias("n"),
                                                                    pl.col("_g").hash(seed=3).alias("h")))
    if not out:
        return pl.DataFrame(schema={key: frame.schema[key], "n": pl.Int32, "h": pl.UInt64})
    return pl.concat(out).with_columns(pl.col("n").cast(pl.Int32)).unique()


class DecontaminateStage(Stage[DecontaminateConfig]):
    name = "decontaminate"
    version = "1"
    config_model = DecontaminateConfig
    description = "Flag rows that overlap benchmark items (n-gram ladder, substring match for short items, stop-list)."
    example = "curate decontaminate runs/demo --against math500 --against aime24 --against amc23"
    cli = ("decontaminate",)
    requires = ("prompt",)
    score_namespace = "decon"
    batch_rows = 4096

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("benchmark"), pa.string()), pa.field(self.col("item_id"), pa.string()),
                pa.field(self.col("score"), pa.float64()), pa.field(self.col("method"), pa.string()),
                pa.field(self.col("field"), pa.string())]

    def setup(self) -> None:
        cfg = self.config
        items = pl.concat([benchmarks.load(spec) for spec in cfg.against]).with_columns(
            pl.int_range(pl.len()).alias("item"),
            prepare(pl.col("text")).alias("norm"),
        ).with_columns(pl.col("norm").str.extract_all(TOKEN).alias("tokens"))
        items = items.with_columns(pl.col("tokens").list.len().alias("n_tokens"))
        long_items = items.filter(pl.col("n_tokens") >= cfg.min_ngram_tokens).with_columns(
            (pl.col("n_tokens") // 3).clip(5, 13).cast(pl.Int32).alias("n"))
        grams = ngram_hashes(long_items, "item", "n")
        common = grams.group_by("h").agg(pl.col("item").n_unique().alias("_items")).filter(
            pl.col("_items") >= cfg.stop_items)
        grams = grams.join(common, on="h", how="anti")
        totals = grams.group_by("item").len(name="total")
        self._index = grams.join(totals, on="item")
        self._ns = sorted(self._index["n"].unique().to_list())
        self._items = items.select("item", "benchmark", "item_id")
        # short items match as a run of whole tokens (punctuation-insensitive substring)
        short = items.with_columns((" " + pl.col("tokens").list.join(" ") + " ").alias("norm")).filter(
            (pl.col("n_tokens") < cfg.min_ngram_tokens) & (pl.col("norm").str.len_chars() >= cfg.min_substring_chars))
        self._short = short.select("item", "norm")
        self._stop_count = common.height
        self._numbers = items.select("item", pl.col("tokens").list.eval(
            pl.element().filter(pl.element().str.contains(_DISTINCTIVE_NUMBER))).list.unique().alias("num")).explode(
            "num").drop_nulls()

    def _check(self, texts: pl.Series) -> pl.DataFrame:
        """Best match per distinct text: row, item, score, method."""
        frame = pl.DataFrame({"text": texts}).with_row_index("row").with_columns(
            prepare(pl.col("text")).alias("norm")).with_columns(pl.col("norm").str.extract_all(TOKEN).alias("tokens"))
        hits = []
        for n in self._ns:
            grams = ngram_hashes(frame.with_columns(pl.lit(n).cast(pl.Int32).alias("n")), "row", "n")
            matched = grams.join(self._index.filter(pl.col("n") == n), on=["h", "n"])
            hits.append(matched.group_by("row", "item").agg(
                (pl.col("h").n_unique() / pl.col("total").first()).alias("score")).with_columns(
                pl.lit(f"ngram{n}").alias("method")))
        if self._short.height:
            patterns = self._short["norm"].to_list()
            joined = " " + pl.col("tokens").list.join(" ") + " "
            found = frame.select("row", joined.str.extract_many(patterns, overlapping=True).alias("m")).explode(
                "m").drop_nulls("m")
            if found.height:
                hits.append(found.join(self._short.rename({"norm": "m"}), on="m").select(
                    "row", "item", pl.lit(1.0).alias("score"), pl.lit("substring").alias("method")))
        if not hits:
            return pl.DataFrame(schema={"row": pl.UInt32, "item": pl.Int64, "score": pl.Float64, "method": pl.Utf8})
        candidates = (pl.concat([h.with_columns(pl.col("row").cast(pl.UInt32), pl.col("item").cast(pl.Int64))
                                 for h in hits])
                      .filter(pl.col("score") >= self.config.threshold))
        # numbers must agree: same words with other numbers is another problem of a template
        row_numbers = frame.select(pl.col("row").cast(pl.UInt32), pl.col("tokens").list.eval(
            pl.element().filter(pl.element().str.contains(_DISTINCTIVE_NUMBER))).alias("num")).explode("num").drop_nulls()
        item_numbers = self._numbers.with_columns(pl.col("item").cast(pl.Int64))
        share = (candidates.select("row", "item").join(item_numbers, on="item")
                 .join(row_numbers.with_columns(pl.lit(True).alias("_has")), on=["row", "num"], how="left")
                 .group_by("row", "item").agg((pl.col("_has").fill_null(False).sum() / pl.len()).alias("num_share")))
        candidates = candidates.join(share, on=["row", "item"], how="left").filter(
            pl.col("num_share").fill_null(1.0) >= self.config.min_number_share)
        return candidates.sort("score", "item", descending=[True, False]).unique("row", keep="first")

    def process(self, batch: pa.Table) -> BatchResult:
        frame = pl.from_arrow(batch)
        result = pl.DataFrame({"_i": range(frame.height)}, schema={"_i": pl.UInt32})
        out_cols = {k: pl.lit(None, t) for k, t in (("benchmark", pl.Utf8), ("item_id", pl.Utf8),
                                                      ("score", pl.Float64), ("method", pl.Utf8), ("field", pl.Utf8))}
        found = None
        for field in self.config.fields:
            texts = frame[field].fill_null("")
            distinct = texts.unique(maintain_order=True)
            best = self._check(distinct).join(self._items, on="item").with_columns(pl.lit(field).alias("field"))
            mapped = pl.DataFrame({"text": distinct}).with_row_index("row").join(best, on="row").drop("row")
            per_row = pl.DataFrame({"_i": range(frame.height), "text": texts},
                                   schema={"_i": pl.UInt32, "text": pl.Utf8}).join(mapped, on="text").drop("text")
            found = per_row if found is None else pl.concat([found, per_row], how="diagonal_relaxed")
        if found is not None and found.height:
            found = found.sort("score", descending=True).unique("_i", keep="first")
            result = result.join(found.select("_i", "benchmark", "item_id", "score", "method", "field"), on="_i",
                                 how="left")
        else:
            result = result.with_columns(**out_cols)
        result = result.sort("_i")
        out = batch
        for name in ("benchmark", "item_id", "score", "method", "field"):
            out = out.append_column(self.col(name), result[name].to_arrow().cast(
                pa.float64() if name == "score" else pa.string()))
        counts = Counter(f"hit:{b}" for b in result["benchmark"].drop_nulls().to_list())
        return BatchResult(out, counts=counts)
