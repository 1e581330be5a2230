"""`curate verify format`: structural and degeneration checks, vectorised with polars.

Each check is its own column so a `select` policy can combine them as it likes:

* ``format__think_closed``: the thinking section was closed (null when the teacher used no
  thinking markers);
* ``format__has_answer``: the answer part is present and not blank;
* ``format__truncated``: ``finish_reason == "length"``, or thinking opened and never closed;
* ``format__boxed_count``: ``\\boxed`` occurrences in reasoning + answer (real degenerate outputs
  repeat ``\\boxed{}`` thousands of times);
* ``format__max_line_repeats``: how often the most repeated non-blank line occurs;
* ``format__ngram_repeat``: share of repeated word n-grams (default 4-grams) among the last
  ``tail_words`` words: 0 for text that never repeats itself, near 1 for a loop;
* ``format__cjk_share``: CJK characters among all letters;
* ``format__mixed_script_share``: letters outside the text's dominant script (Latin, CJK,
  Cyrillic, Arabic, other), LaTeX commands, single letters (variables) and Greek (math symbols)
  left out. A Chinese trace
  with x and y in its formulas scores low; English reasoning that drifts into Chinese scores high;
* ``format__tokens``: length in tokens of reasoning + answer. Approximate by default: the count
  of pre-tokens ``\\w+|[^\\w\\s]`` (word runs and single punctuation marks), no vocabulary
  needed; with ``tokenizer`` set, the exact count of that (local) Hugging Face tokenizer;
* ``format__ok``: every check within its threshold.

No Python loop per row: every column is a polars expression or an explode + group-by over the
batch (lines, words).
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
from pydantic import Field

from curate.stage import BatchResult, Stage, StageConfig

_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
_SCRIPTS = {
    "latin": r"\p{Latin}",
    "cjk": _CJK,
    "cyrillic": r"\p{Cyrillic}",
    "arabic": r"\p{Arabic}",
}
_LATEX_COMMAND = r"\\[A-Za-z]+"


class FormatVerifyConfig(StageConfig):
    max_boxed: int = Field(5, ge=0, description="More \\boxed in reasoning + answer than this is degenerate.")
    max_line_repeats: int = Field(20, ge=1, description="A non-blank line repeated more often than this is degenerate.")
    max_ngram_repeat: float = Field(0.5, ge=0, le=1, description="Largest share of repeated word n-grams in the tail.")
    max_mixed_script: float = Field(0.05, ge=0, le=1, description="Largest share of letters outside the dominant script.")
    tail_words: int = Field(2000, ge=10, description="Words at the end of the trace checked for repeated n-grams.")
    ngram: int = Field(4, ge=1, description="n of the repeated n-gram check.")
    require_answer: bool = Field(True, description="A trace with a blank answer part is not ok.")
    tokenizer: str | None = Field(None, description="Hugging Face tokenizer (local name or path) for exact token counts; default: a fast approximation.")
    max_tokens: int | None = Field(None, ge=1, description="More tokens than this is not ok (default: no limit).")


class FormatVerifyStage(Stage[FormatVerifyConfig]):
    name = "verify_format"
    version = "2"
    config_model = FormatVerifyConfig
    description = ("Format and degeneration checks: closed thinking, answer present, truncation, repeated "
                   "lines / n-grams / boxed, language mixing, length in tokens.")
    example = "curate verify format runs/demo --max-line-repeats 20 --max-boxed 5"
    cli = ("verify", "format")
    requires = ("reasoning", "answer", "think_closed", "finish_reason")
    score_namespace = "format"
    batch_rows = 2048

    _types = {
        "think_closed": pa.bool_(), "has_answer": pa.bool_(), "truncated": pa.bool_(),
        "boxed_count": pa.int32(), "max_line_repeats": pa.int32(), "ngram_repeat": pa.float64(),
        "cjk_share": pa.float64(), "mixed_script_share": pa.float64(), "tokens": pa.int64(), "ok": pa.bool_(),
    }

    def __init__(self, config: FormatVerifyConfig | None = None):
        super().__init__(config)
        self._tokenizer = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col(k), t) for k, t in self._types.items()]

    def setup(self) -> None:
        if self.config.tokenizer and self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer, local_files_only=True)
            except OSError as exc:
                raise ValueError(
                    f"verify_format: cannot load tokenizer {self.config.tokenizer!r} from a local path or "
                    f"the Hugging Face cache (no downloads at run time): {exc}"
                ) from None

    # -- checks over the whole batch -----------------------------------------------------------
    def _line_repeats(self, rows: pl.DataFrame) -> pl.DataFrame:
        return (
            rows.select("_row", pl.col("_text").str.split("\n").alias("_line")).explode("_line")
            .with_columns(pl.col("_line").str.strip_chars())
            .filter(pl.col("_line").str.len_chars() > 0)
            .group_by("_row", "_line").len()
            .group_by("_row").agg(pl.col("len").max().alias("max_line_repeats"))
        )

    def _ngram_repeat(self, rows: pl.DataFrame) -> pl.DataFrame:
        """1 - distinct n-grams / n-grams over each row's last `tail_words` words. The words of all
        rows are one exploded column; an n-gram is n consecutive words of the same row, hashed."""
        n = self.config.ngram
        words = (
            rows.select("_row", pl.col("_text").str.slice(-12 * self.config.tail_words)
                        .str.replace_all(r"[\n\t\r]", " ").str.split(" ").list.eval(
                pl.element().filter(pl.element().str.len_bytes() > 0)).list.tail(self.config.tail_words).alias("_w"))
            .explode("_w").drop_nulls("_w")
        )
        same_row = pl.all_horizontal([pl.col("_row").shift(-i) == pl.col("_row") for i in range(1, n)]) if n > 1 \
            else pl.lit(True)
        grams = words.with_columns(
            pl.concat_str([pl.col("_w").shift(-i) for i in range(n)], separator="\x1f").hash().alias("_g"),
            same_row.alias("_ok"),
        ).filter(pl.col("_ok"))
        return grams.group_by("_row").agg((1 - pl.col("_g").n_unique() / pl.len()).alias("ngram_repeat"))

    @staticmethod
    def _script_shares(rows: pl.DataFrame) -> pl.DataFrame:
        """cjk_share and mixed_script_share per row. Reasoning text is mostly ASCII, so ASCII
        letters are counted in one cheap pass and every script test runs only on the (short)
        string of non-ASCII characters; each step is materialised so no expression is evaluated
        twice."""
        plain = pl.col("_text").str.replace_all(_LATEX_COMMAND, "")
        step = rows.select(
            "_row",
            # Single letters are variables (x, a, b in formulas), not words of a language.
            plain.str.replace_all(r"\b[A-Za-z]\b|[^A-Za-z]+", "").str.len_bytes().cast(pl.Int64).alias("ascii"),
            plain.str.replace_all(r"[\x00-\x7f]+", "").alias("rest"),
        )
        rest = pl.col("rest")
        step = step.select(
            "_row",
            (pl.col("ascii") + rest.str.count_matches(r"\p{L}")).alias("letters"),
            rest.str.count_matches(r"\p{Greek}").alias("greek"),
            (pl.col("ascii") + rest.str.count_matches(_SCRIPTS["latin"])).alias("latin"),
            *[rest.str.count_matches(p).alias(k) for k, p in _SCRIPTS.items() if k != "latin"],
        )
        step = step.with_columns(
            (pl.col("letters") - pl.col("greek") - pl.sum_horizontal(list(_SCRIPTS))).clip(lower_bound=0).alias("other"),
            (pl.col("letters") - pl.col("greek")).alias("scored"),
        )
        return step.select(
            "_row",
            (pl.col("cjk") / pl.col("letters").clip(lower_bound=1)).cast(pl.Float64).alias("cjk_share"),
            pl.when(pl.col("scored") > 0)
            .then(1 - pl.max_horizontal([*_SCRIPTS, "other"]) / pl.col("scored"))
            .otherwise(0.0).clip(lower_bound=0).cast(pl.Float64).alias("mixed_script_share"),
        )

    def _tokens(self, text: pl.Series) -> pl.Series:
        if self._tokenizer is None:
            return text.to_frame("t").select(pl.col("t").str.count_matches(r"\w+|[^\w\s]").cast(pl.Int64)).to_series()
        # Inherently per text, but one batched call into the (Rust) tokenizer, not a Python loop.
        ids = self._tokenizer(text.fill_null("").to_list(), add_special_tokens=False)["input_ids"]
        return pl.Series([len(x) for x in ids], dtype=pl.Int64)

    def scores(self, batch: pa.Table) -> pl.DataFrame:
        cfg = self.config
        frame = pl.from_arrow(batch.select(list(self.requires)))
        text = pl.concat_str([pl.col("reasoning").fill_null(""), pl.col("answer").fill_null("")], separator="\n")
        rows = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), text.alias("_text"))
        scripts = self._script_shares(rows)
        scored = frame.select(
            pl.col("think_closed"),
            (pl.col("answer").fill_null("").str.strip_chars().str.len_chars() > 0).alias("has_answer"),
            ((pl.col("finish_reason") == "length").fill_null(False) | (pl.col("think_closed") == False).fill_null(False))  # noqa: E712
            .alias("truncated"),
            text.str.count_matches(r"\boxed", literal=True).cast(pl.Int32).alias("boxed_count"),
        ).with_row_index("_row").join(
            self._line_repeats(rows), on="_row", how="left").join(
            self._ngram_repeat(rows), on="_row", how="left").join(
            scripts, on="_row", how="left").sort("_row").with_columns(
            pl.col("max_line_repeats").fill_null(0).cast(pl.Int32),
            pl.col("ngram_repeat").fill_null(0.0),
            self._tokens(rows["_text"]).alias("tokens"),
        )
        ok = (
            ~pl.col("truncated")
            & (pl.col("boxed_count") <= cfg.max_boxed)
            & (pl.col("max_line_repeats") <= cfg.max_line_repeats)
            & (pl.col("ngram_repeat") <= cfg.max_ngram_repeat)
            & (pl.col("mixed_script_share") <= cfg.max_mixed_script)
        )
        if cfg.require_answer:
            ok = ok & pl.col("has_answer")
        if cfg.max_tokens is not None:
            ok = ok & (pl.col("tokens") <= cfg.max_tokens)
        return scored.with_columns(ok.alias("ok")).drop("_row")

    def process(self, batch: pa.Table) -> BatchResult:
        cfg = self.config
        if self.config.tokenizer and self._tokenizer is None:
            self.setup()
        scored = self.scores(batch)
        flags = scored.select(
            (~pl.col("has_answer")).sum().alias("no_answer"),
            pl.col("truncated").sum().alias("truncated"),
            (pl.col("boxed_count") > cfg.max_boxed).sum().alias("boxed_repeated"),
            (pl.col("max_line_repeats") > cfg.max_line_repeats).sum().alias("line_repeated"),
            (pl.col("ngram_repeat") > cfg.max_ngram_repeat).sum().alias("ngram_repeated"),
            (pl.col("mixed_script_share") > cfg.max_mixed_script).sum().alias("language_mixing"),
            pl.col("ok").sum().alias("ok"),
        ).row(0, named=True)
        counts: Counter[str] = Counter({f"flag:{k}" if k != "ok" else k: int(v) for k, v in flags.items()})
        out = batch
        for field in self.output_fields():
            name = field.name.split("__", 1)[1]
            out = out.append_column(field.name, scored[name].to_arrow().cast(field.type))
        return BatchResult(out, counts=counts)
