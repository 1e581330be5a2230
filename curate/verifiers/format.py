"""`curate verify format`: structural and degeneration checks, vectorised with polars.

Each check is its own column so `select` can combine them as it likes:

* format__think_closed: the thinking section was closed (null when the teacher uses no markers)
* format__has_answer: a non-empty answer part
* format__truncated: finish_reason == "length", or thinking opened and never closed
* format__boxed_count: `\\boxed` occurrences in the answer (thousands in real degenerate outputs)
* format__max_line_repeats: how often the most repeated non-empty line occurs
* format__ngram_repeat: share of repeated word 4-grams in the last `tail_words` words
* format__cjk_share: share of CJK characters among letters (language mixing)
* format__tokens: approximate token count of reasoning + answer, counted as words and punctuation
  runs (`\\w+|[^\\w\\s]`), which tracks BPE counts within about 15% on English math text
* format__ok: every check within its threshold
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.stage import BatchResult, Stage, StageConfig

_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"


class FormatVerifyConfig(StageConfig):
    max_boxed: int = Field(3, description="More \\boxed in the answer than this is degenerate.")
    max_line_repeats: int = Field(20, description="A non-empty line repeated more often is degenerate.")
    max_ngram_repeat: float = Field(0.5, description="Largest share of repeated word 4-grams in the tail.")
    max_cjk_share: float = Field(0.05, description="CJK share above this (with Latin text) is language mixing.")
    tail_words: int = Field(2000, description="Words at the end of the trace checked for repetition.")
    ngram: int = Field(4, description="n of the repeated n-gram check.")


class FormatVerifyStage(Stage[FormatVerifyConfig]):
    name = "verify_format"
    version = "1"
    config_model = FormatVerifyConfig
    description = "Format and degeneration checks: closed thinking, answer present, truncation, repetition, language mixing, length."
    example = "curate verify format runs/demo --max-line-repeats 20"
    cli = ("verify", "format")
    requires = ("reasoning", "answer", "think_closed", "finish_reason")
    score_namespace = "format"
    batch_rows = 4096

    def output_fields(self) -> list[pa.Field]:
        types = {"think_closed": pa.bool_(), "has_answer": pa.bool_(), "truncated": pa.bool_(),
                 "boxed_count": pa.int32(), "max_line_repeats": pa.int32(), "ngram_repeat": pa.float64(),
                 "cjk_share": pa.float64(), "tokens": pa.int64(), "ok": pa.bool_()}
        return [pa.field(self.col(k), t) for k, t in types.items()]

    def _repetition(self, frame: pl.DataFrame, text: pl.Expr) -> pl.DataFrame:
        """Per row: most repeated line count and repeated n-gram share, by exploding with a row id."""
        cfg = self.config
        ids = frame.select(pl.int_range(pl.len()).alias("_row"), text.alias("_text"))
        lines = (
            ids.select("_row", pl.col("_text").str.split("\n").alias("_line")).explode("_line")
            .with_columns(pl.col("_line").str.strip_chars())
            .filter(pl.col("_line").str.len_chars() > 0)
            .group_by("_row", "_line").len()
            .group_by("_row").agg(pl.col("len").max().alias("max_line_repeats"))
        )
        words = (
            ids.select("_row", pl.col("_text").str.split(" ").list.tail(cfg.tail_words).alias("_w")).explode("_w")
            .filter(pl.col("_w").is_not_null() & (pl.col("_w") != ""))
        )
        shifted = [pl.col("_w").shift(-i).over("_row") for i in range(cfg.ngram)]
        grams = (
            words.with_columns(pl.concat_str(shifted, separator=" ").alias("_g"))
            .filter(pl.col("_g").is_not_null())
            .group_by("_row").agg(
                (1 - pl.col("_g").n_unique() / pl.len()).alias("ngram_repeat")
            )
        )
        return (
            ids.select("_row").join(lines, on="_row", how="left").join(grams, on="_row", how="left")
            .sort("_row").fill_null(0)
        )

    def process(self, batch: pa.Table) -> BatchResult:
        cfg = self.config
        frame = pl.from_arrow(batch.select(["reasoning", "answer", "think_closed", "finish_reason"]))
        text = pl.concat_str([pl.col("reasoning").fill_null(""), pl.col("answer").fill_null("")], separator="\n")
        rep = self._repetition(frame, text)
        scored = frame.select(
            pl.col("think_closed").alias("think_closed"),
            (pl.col("answer").fill_null("").str.strip_chars().str.len_chars() > 0).alias("has_answer"),
            ((pl.col("finish_reason") == "length").fill_null(False) | (pl.col("think_closed") == False).fill_null(False))  # noqa: E712
            .alias("truncated"),
            pl.col("answer").fill_null("").str.count_matches(r"\\boxed", literal=False).cast(pl.Int32).alias("boxed_count"),
            (text.str.count_matches(_CJK) / text.str.count_matches(r"\p{L}").clip(lower_bound=1)).alias("cjk_share"),
            text.str.count_matches(r"\w+|[^\w\s]").cast(pl.Int64).alias("tokens"),
        ).with_columns(
            rep["max_line_repeats"].cast(pl.Int32).alias("max_line_repeats"),
            rep["ngram_repeat"].cast(pl.Float64).alias("ngram_repeat"),
        )
        scored = scored.with_columns(
            (
                pl.col("has_answer")
                & ~pl.col("truncated")
                & (pl.col("boxed_count") <= cfg.max_boxed)
                & (pl.col("max_line_repeats") <= cfg.max_line_repeats)
                & (pl.col("ngram_repeat") <= cfg.max_ngram_repeat)
                & (pl.col("cjk_share") <= cfg.max_cjk_share)
            ).alias("ok")
        )
        counts: Counter[str] = Counter()
        reasons = {
            "no_answer": ~scored["has_answer"], "truncated": scored["truncated"],
            "boxed_repeated": scored["boxed_count"] > cfg.max_boxed,
            "line_repeated": scored["max_line_repeats"] > cfg.max_line_repeats,
            "ngram_repeated": scored["ngram_repeat"] > cfg.max_ngram_repeat,
            "language_mixing": scored["cjk_share"] > cfg.max_cjk_share,
        }
        for reason, mask in reasons.items():
            counts[f"flag:{reason}"] = int(mask.sum())
        counts["ok"] = int(scored["ok"].sum())
        out = batch
        for field in self.output_fields():
            name = field.name.split("__", 1)[1]
            out = out.append_column(field.name, scored[name].to_arrow().cast(field.type))
        return BatchResult(out, counts=counts)
