"""`curate decontaminate RUN --against math500 --against aime24 ...`: benchmark overlap per row.

Checks problems (`prompt`) and traces (`reasoning`, `answer`; `fields`) against the shipped
benchmark registry (`filters/benchmarks.py`) or a user's files, with the methods of
`filters/decon_index.py`: exact normalised match, an n-gram ladder (13-grams for long items,
8-grams for shorter ones), a whole-run substring match for items too short for n-grams, number and
LaTeX normalisation (`filters/ngrams.py`), a stop-list of n-grams common across the benchmarks and
one of n-grams common across the training corpus itself, a number-agreement check, and an
optional embedding-similarity pass for paraphrases.

It is a global stage: `fit` streams only the checked text columns, matches each distinct text once
(a prompt shared by 16 traces is checked once), counts benchmark n-grams across the corpus for the
corpus stop-list, and keeps every hit in the state table (`_state.parquet`, keyed by a hash of the
text). `process` joins the best hit onto each row.

Columns (null when clean): decon__benchmark, decon__item_id, decon__score (exact/substring 1.0,
n-gram coverage of the item, or cosine), decon__method (exact, substring, ngram8, ngram13,
embedding), decon__field. `contamination_report(step_dir)` lists every hit with the training text
and the benchmark text side by side.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from curate.filters import benchmarks
from curate.filters.decon_index import BenchmarkIndex
from curate.stage import BatchResult, Stage, StageConfig

KEY_SEED = 23
_METHOD_PRIORITY = {"exact": 0, "substring": 1, "embedding": 3}  # n-gram methods: 1 (by score)
_TEXT_FIELDS = ("prompt", "reasoning", "answer")
HIT_SCHEMA = {"field": pl.Utf8, "key": pl.UInt64, "rank": pl.Int32, "benchmark": pl.Utf8, "item_id": pl.Utf8,
              "score": pl.Float64, "method": pl.Utf8, "text": pl.Utf8, "benchmark_text": pl.Utf8}


class DecontaminateConfig(StageConfig):
    against: list[str] = Field(["math500", "math_test", "gsm8k", "aime24", "aime25", "amc23", "minerva",
                                "olympiadbench"],
                               description="Benchmarks: registry names, groups (math, code, aime, hmmt, all) or "
                               "PATH[:TEXT_FIELD[:ID_FIELD]] (JSONL, JSON or Parquet).")
    fields: list[str] = Field(["prompt", "reasoning"], description="Row texts checked: prompt, reasoning, answer.")
    threshold: float = Field(0.8, gt=0, le=1, description="Share of an item's n-grams a text must contain.")
    ladder: list[tuple[int, int]] = Field([(40, 13), (10, 8)],
                                          description="(minimum item tokens, n) tiers: long items use long n-grams.")
    min_substring_tokens: int = Field(4, ge=1, description="Items shorter than the smallest tier but at least this "
                                      "long must appear whole (as a token run); shorter items only match exactly.")
    substring_fields: list[str] = Field(["prompt"], description="Fields where short items may match as a substring "
                                        "(a 5-token item inside a long trace is usually chance).")
    stop_items: int = Field(5, ge=2, description="n-grams in this many distinct benchmark texts are boilerplate.")
    corpus_stop_share: float = Field(0.01, gt=0, le=1, description="Benchmark n-grams found in this share of the "
                                     "corpus's distinct texts are boilerplate too...")
    corpus_stop_min: int = Field(50, ge=1, description="...and in at least this many texts.")
    min_number_share: float = Field(0.9, ge=0, le=1, description="Share of an item's distinct numbers a text "
                                    "must contain: a template with other numbers is another problem.")
    embedding_threshold: float | None = Field(None, description="Cosine at and above which a text with no n-gram "
                                              "hit is flagged (paraphrases); off when unset.")
    embedding_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers model for the embedding pass.")
    embedding_fields: list[str] = Field(["prompt"], description="Fields the embedding pass checks.")
    report_chars: int = Field(4000, ge=100, description="Characters of each text kept in the report.")
    chunk_rows: int = Field(20_000, ge=100, description="Distinct texts matched at once (bounds memory).")

    @field_validator("fields", "substring_fields", "embedding_fields")
    @classmethod
    def _known_fields(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in _TEXT_FIELDS]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}: use {', '.join(_TEXT_FIELDS)}")
        return value

    @field_validator("against")
    @classmethod
    def _some_benchmark(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one benchmark")
        return value


def text_keys(texts: pl.Series) -> pl.Series:
    """uint64 key of each exact text (fit and process must agree; see `fingerprint`)."""
    return texts.fill_null("").hash(seed=KEY_SEED).alias("key")


def _method_rank(method: pl.Expr) -> pl.Expr:
    return method.replace_strict(_METHOD_PRIORITY, default=1, return_dtype=pl.Int32)


class DecontaminateStage(Stage[DecontaminateConfig]):
    name = "decontaminate"
    version = "2"
    config_model = DecontaminateConfig
    description = ("Flag rows overlapping benchmark items: exact, n-gram ladder, short-item substring, stop-lists, "
                   "number agreement, optional embeddings; a side-by-side report.")
    example = ("curate decontaminate runs/demo --against math500 --against aime24 --against amc23 "
               "--fields prompt --fields reasoning")
    cli = ("decontaminate",)
    score_namespace = "decon"
    batch_rows = 8192

    # the columns read depend on the config: only the checked text fields
    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.config.fields)

    @property
    def fit_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.config.fields)

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("benchmark"), pa.string()), pa.field(self.col("item_id"), pa.string()),
                pa.field(self.col("score"), pa.float64()), pa.field(self.col("method"), pa.string()),
                pa.field(self.col("field"), pa.string())]

    def fingerprint(self) -> dict:
        # the state is keyed by polars' string hash, stable only within one polars version
        return {**super().fingerprint(), "text_key": f"polars-{pl.__version__}"}

    # -- fit: match every distinct text once ----------------------------------------------------
    def build_index(self) -> BenchmarkIndex:
        cfg = self.config
        return BenchmarkIndex(benchmarks.load_many(cfg.against), ladder=list(cfg.ladder),
                              min_substring_tokens=cfg.min_substring_tokens, stop_items=cfg.stop_items)

    def fit(self, batches) -> pa.Table:
        cfg = self.config
        index = self.build_index()
        seen = {f: np.zeros(0, np.uint64) for f in cfg.fields}
        hits, gram_rows, distinct = [], [], 0
        embedder = _EmbeddingPass(index, cfg) if cfg.embedding_threshold is not None else None
        bar = tqdm(desc="decontaminate: distinct texts", unit="texts", disable=None, leave=False)
        for batch in batches:
            frame = pl.from_arrow(pa.Table.from_batches([batch])) if isinstance(batch, pa.RecordBatch) else batch
            for field in cfg.fields:
                column = frame[field].cast(pl.Utf8).fill_null("")
                texts = pl.DataFrame({"text": column, "key": text_keys(column)}).unique("key", maintain_order=True)
                texts = texts.filter((pl.col("text") != "") & ~pl.col("key").is_in(pl.Series(seen[field]).implode()))
                seen[field] = np.union1d(seen[field], texts["key"].to_numpy())
                distinct += texts.height
                for start in range(0, texts.height, cfg.chunk_rows):
                    chunk = texts.slice(start, cfg.chunk_rows)
                    hits.append(self._match_chunk(index, embedder, field, chunk, gram_rows))
                    bar.update(chunk.height)
        bar.close()
        self._distinct = distinct
        hits = [h for h in hits if h.height]
        hits_df = pl.concat(hits, how="diagonal_relaxed") if hits else None
        stop = self._corpus_stop(gram_rows, distinct)
        self._corpus_stop_count = stop.height
        self._benchmark_stop_count = index.stop.height
        if hits_df is None or not hits_df.height:
            return pl.DataFrame(schema=HIT_SCHEMA).to_arrow()
        hits_df = self._rescore(hits_df, index, stop)
        return self._state(hits_df, index)

    def _match_chunk(self, index: BenchmarkIndex, embedder: _EmbeddingPass | None, field: str,
                     chunk: pl.DataFrame, gram_rows: list[pl.DataFrame]) -> pl.DataFrame:
        """Hits of one chunk of distinct texts (columns of HIT_SCHEMA but rank, plus item and grams)."""
        cfg = self.config
        found, present = index.match(chunk["text"])
        gram_rows.append(present.group_by("n", "h").len("rows"))
        if field not in cfg.substring_fields:
            found = found.filter(pl.col("method") != "substring")
        found = found.filter(pl.when(pl.col("method") == "exact").then(True)
                             .when(pl.col("method") == "substring").then(pl.col("score") >= 1.0)
                             .otherwise(pl.col("score") >= cfg.threshold))
        found = index.numbers_agree(found, chunk["text"], cfg.min_number_share)
        if embedder is not None and field in cfg.embedding_fields:
            found = pl.concat([found, embedder.match(chunk["text"], exclude=found["row"])], how="diagonal_relaxed")
        return found.with_columns(
            pl.lit(field).alias("field"), chunk["key"].gather(found["row"]).alias("key"),
            chunk["text"].gather(found["row"]).str.slice(0, cfg.report_chars).alias("text")).drop("row")

    def _corpus_stop(self, gram_rows: list[pl.DataFrame], distinct: int) -> pl.DataFrame:
        cfg = self.config
        if not gram_rows:
            return pl.DataFrame(schema={"n": pl.Int32, "h": pl.UInt64})
        needed = max(cfg.corpus_stop_min, int(np.ceil(cfg.corpus_stop_share * distinct)))
        return (pl.concat(gram_rows).group_by("n", "h").agg(pl.col("rows").sum())
                .filter(pl.col("rows") >= needed).select("n", "h"))

    def _rescore(self, hits: pl.DataFrame, index: BenchmarkIndex, stop: pl.DataFrame) -> pl.DataFrame:
        """Drop corpus-common n-grams from both the matched grams and the item's total; this can
        only remove n-gram hits (exact, substring and embedding hits do not use grams)."""
        if not stop.height:
            return hits
        cfg = self.config
        stop_set = stop["h"].implode()
        totals = (index.grams.join(stop, on=["n", "h"], how="anti").group_by("item").len("total"))
        is_ngram = pl.col("method").str.starts_with("ngram")
        rescored = (hits.join(totals, on="item", how="left")
                    .with_columns(pl.col("grams").list.set_difference(stop_set).list.len().alias("_m"))
                    .with_columns(pl.when(is_ngram).then(pl.col("_m") / pl.col("total")).otherwise(pl.col("score"))
                                  .fill_nan(0.0).fill_null(0.0).alias("score")))
        return rescored.filter(~is_ngram | (pl.col("score") >= cfg.threshold)).drop("total", "_m")

    def _state(self, hits: pl.DataFrame, index: BenchmarkIndex) -> pa.Table:
        items = index.items.select("item", "benchmark", "item_id",
                                   pl.col("text").str.slice(0, self.config.report_chars).alias("benchmark_text"))
        ranked = (hits.join(items, on="item")
                  .sort(["field", "key", _method_rank(pl.col("method")), "score", "item"],
                        descending=[False, False, False, True, False])
                  .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("field", "key").alias("rank"))
                  .unique(["field", "key", "item"], keep="first", maintain_order=True))
        return ranked.select(list(HIT_SCHEMA)).cast(HIT_SCHEMA).to_arrow()

    def summarize(self, counts: Counter) -> dict:
        out = {"hits": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("hit:")},
               "methods": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("method:")},
               "fields": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("field:")},
               "benchmarks": benchmarks.expand(self.config.against)}
        if hasattr(self, "_distinct"):
            out.update(distinct_texts=self._distinct, benchmark_stoplist=self._benchmark_stop_count,
                       corpus_stoplist=self._corpus_stop_count)
        return out

    # -- process: join the best hit of each field, keep the best field ------------------------------
    def process(self, batch: pa.Table) -> BatchResult:
        frame = pl.from_arrow(batch)
        state = pl.from_arrow(self.state) if self.state is not None and self.state.num_rows else \
            pl.DataFrame(schema=HIT_SCHEMA)
        best = state.filter(pl.col("rank") == 1)
        per_field = []
        for order, field in enumerate(self.config.fields):
            keyed = pl.DataFrame({"_i": np.arange(frame.height, dtype=np.int64), "key": text_keys(frame[field])})
            joined = keyed.join(best.filter(pl.col("field") == field), on="key")
            per_field.append(joined.with_columns(pl.lit(order).alias("_order")))
        found = (pl.concat(per_field).sort(["_i", _method_rank(pl.col("method")), "score", "_order"],
                                           descending=[False, False, True, False])
                 .unique("_i", keep="first"))
        result = pl.DataFrame({"_i": np.arange(frame.height, dtype=np.int64)}).join(
            found, on="_i", how="left", maintain_order="left")
        out = batch
        for name, kind in (("benchmark", pa.string()), ("item_id", pa.string()), ("score", pa.float64()),
                           ("method", pa.string()), ("field", pa.string())):
            out = out.append_column(self.col(name), result[name].to_arrow().cast(kind))
        counts: Counter[str] = Counter()
        for prefix, column in (("hit", "benchmark"), ("method", "method"), ("field", "field")):
            counts.update({f"{prefix}:{k}": v for k, v in found.group_by(column).len().rows()})
        counts["flagged"] = found.height
        return BatchResult(out, counts=counts)


class _EmbeddingPass:
    """Cosine of each text to its nearest benchmark item (exact inner product: benchmarks are
    small), for texts with no n-gram hit."""

    def __init__(self, index: BenchmarkIndex, cfg: DecontaminateConfig):
        from curate.filters.embeddings import embed_texts

        self._embed = lambda texts: embed_texts(texts, model=cfg.embedding_model)
        self._threshold = cfg.embedding_threshold
        self._items = self._embed(index.items["text"].to_list())

    def match(self, texts: pl.Series, *, exclude: pl.Series) -> pl.DataFrame:
        rows = np.setdiff1d(np.arange(len(texts)), exclude.to_numpy())
        if not len(rows):
            return pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "score": pl.Float64, "method": pl.Utf8})
        vectors = self._embed(texts.gather(rows).to_list())
        sims = vectors @ self._items.T
        best = sims.argmax(axis=1)
        score = sims[np.arange(len(rows)), best]
        keep = score >= self._threshold
        return pl.DataFrame({"row": rows[keep].astype(np.int64), "item": best[keep].astype(np.int64),
                             "score": score[keep].astype(np.float64), "method": ["embedding"] * int(keep.sum())})


def contamination_report(step_dir: str | Path) -> pa.Table:
    """Every hit of a finished decontaminate step, best first, with the training text and the
    benchmark text side by side: field, benchmark, item_id, method, score, rank (1 = the hit shown
    in the row's columns), rows (rows of the step holding that text), text, benchmark_text."""
    step_dir = Path(step_dir)
    state_path = step_dir / "_state.parquet"
    if not state_path.exists():
        raise FileNotFoundError(f"{step_dir} has no _state.parquet: is it a finished decontaminate step?")
    hits = pl.read_parquet(state_path)
    if not hits.height:
        return pl.DataFrame(schema={**HIT_SCHEMA, "rows": pl.UInt32}).drop("key").to_arrow()
    parts = sorted(step_dir.glob("part-*.parquet"))
    counted = []
    for field in hits["field"].unique().to_list():
        for part in parts:
            if field in pq.read_schema(part).names:
                column = pl.read_parquet(part, columns=[field])[field]
                counted.append(pl.DataFrame({"field": field, "key": text_keys(column)}))
    rows = (pl.concat(counted).group_by("field", "key").len("rows") if counted
            else pl.DataFrame(schema={"field": pl.Utf8, "key": pl.UInt64, "rows": pl.UInt32}))
    return (hits.join(rows, on=["field", "key"], how="left")
            .sort(["benchmark", "item_id", "rank", "score"], descending=[False, False, False, True])
            .select("field", "benchmark", "item_id", "method", "score", "rank", "rows", "text", "benchmark_text")
            .to_arrow())
