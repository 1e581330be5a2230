"""The benchmark side of decontamination: items tokenised once into hashed n-grams by the ladder,
with the stop-list applied, and the matching of a chunk of texts against them.

Methods, per benchmark item of L normalised tokens:

* ``exact``: the whole normalised token run of a text equals the item's (every item).
* ``ngramN``: items of at least `ladder` tokens are indexed by their N-grams (long items use long
  N, so a chance overlap cannot reach them); a text's score for an item is the share of the item's
  N-grams it contains (coverage of the item, so added instructions or a longer trace do not dilute
  it).
* ``substring``: items too short for the ladder (`min_substring_tokens` <= L < smallest tier) must
  appear whole as a run of tokens: every one of their `min_substring_tokens`-grams is present.
  Shorter items match only exactly.
* A stop-list removes N-grams that occur in `stop_items` or more distinct benchmark texts
  (template boilerplate such as "how many positive integers less than"); `DecontaminateStage`
  adds the n-grams common across the training corpus.
* Numbers must agree: (nearly) all of an item's numbers must be in the text, so the same
  template with other numbers (a different MATH problem: "divided by 8" / "divided by 9") is not
  a hit. Normalisation makes number formatting agree first.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curate.filters.ngrams import HashSet, Windows, token_strings, tokenise

_NUMBER = r"^\d+(?:\.\d+)?$"
_EMPTY_HITS = {"row": pl.Int64, "item": pl.Int64, "n": pl.Int32, "grams": pl.List(pl.UInt64), "score": pl.Float64,
               "method": pl.Utf8}


def numbers_of(texts: pl.Series) -> pl.DataFrame:
    """(row, num): the distinct numbers of each text, as normalised tokens."""
    lists = pl.from_arrow(token_strings(texts)).alias("num")
    return (pl.DataFrame({"row": np.arange(len(texts), dtype=np.int64)}).with_columns(lists).explode("num")
            .filter(pl.col("num").str.contains(_NUMBER)).unique())


class BenchmarkIndex:
    def __init__(self, items: pl.DataFrame, *, ladder: list[tuple[int, int]], min_substring_tokens: int,
                 stop_items: int):
        """`items`: benchmark, item_id, text (in priority order: earlier benchmarks win ties).
        `ladder`: (minimum item tokens, n) tiers."""
        self.items = items.with_row_index("item").with_columns(pl.col("item").cast(pl.Int64))
        tiers = sorted(ladder, reverse=True)
        tokens = tokenise(self.items["text"])
        lengths = tokens.lengths
        n_of = np.zeros(len(lengths), np.int32)
        for min_tokens, n in reversed(tiers):
            n_of[lengths >= min_tokens] = n
        smallest = min(t for t, _ in tiers)
        short = (lengths >= min_substring_tokens) & (lengths < smallest)
        n_of[short] = min_substring_tokens
        windows = Windows(tokens)
        whole = windows.whole()
        self.items = self.items.with_columns(
            pl.Series("tokens", lengths), pl.Series("n", n_of),
            pl.Series("method", np.where(short, "substring", np.where(n_of > 0, np.char.add("ngram", n_of.astype(str)),
                                                                      "exact"))),
            pl.Series("text_key", whole))
        self.exact = pl.DataFrame({"whole": whole, "item": np.arange(len(whole), dtype=np.int64)}).filter(
            pl.col("whole") != 0)
        self._exact_set = HashSet(self.exact["whole"].to_numpy())
        grams = []
        for n in sorted(set(n_of[n_of > 0].tolist())):
            rows, hashes = windows.ngrams(n)
            keep = n_of[rows] == n
            grams.append(pl.DataFrame({"item": rows[keep], "n": np.full(keep.sum(), n, np.int32), "h": hashes[keep]}))
        grams_df = pl.concat(grams).unique() if grams else pl.DataFrame(schema={"item": pl.Int64, "n": pl.Int32,
                                                                               "h": pl.UInt64})
        # boilerplate: n-grams shared by many distinct benchmark texts (identical items in two
        # benchmarks, e.g. MATH-500 inside the MATH test set, count once)
        keyed = grams_df.join(self.items.select("item", "text_key"), on="item")
        self.stop = keyed.group_by("n", "h").agg(pl.col("text_key").n_unique().alias("texts")).filter(
            pl.col("texts") >= stop_items).select("n", "h")
        self.grams = grams_df.join(self.stop, on=["n", "h"], how="anti")
        self._sets = {n: HashSet(part["h"].to_numpy()) for (n,), part in self.grams.partition_by("n", as_dict=True).items()}
        self.totals = self.grams.group_by("item").len("total")
        self.numbers = numbers_of(self.items["text"]).rename({"row": "item"})

    @property
    def ns(self) -> list[int]:
        return sorted(self._sets)

    def match(self, texts: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Candidate hits of a chunk of texts and the (row, n, h) benchmark n-grams each row holds.

        Hits: row, item, n, grams (matched hashes), score, method, before any threshold, so the
        corpus stop-list can re-score them."""
        tokens = tokenise(texts)
        windows = Windows(tokens)
        found = []
        for n, hashset in self._sets.items():
            hashes, valid = windows.all_windows(n)
            positions = np.flatnonzero(valid & hashset.contains(hashes)) if len(hashes) else np.zeros(0, np.int64)
            if len(positions):
                found.append(pl.DataFrame({"row": windows.row_of(positions), "n": np.full(len(positions), n, np.int32),
                                           "h": hashes[positions]}))
        present = pl.concat(found).unique() if found else pl.DataFrame(schema={"row": pl.Int64, "n": pl.Int32,
                                                                               "h": pl.UInt64})
        hits = (present.join(self.grams, on=["n", "h"])
                .group_by("row", "item", "n").agg(pl.col("h").unique().alias("grams"))
                .join(self.totals, on="item")
                .with_columns((pl.col("grams").list.len() / pl.col("total")).alias("score"))
                .join(self.items.select("item", "method"), on="item")
                .select(list(_EMPTY_HITS)))
        whole = windows.whole()
        exact_rows = np.flatnonzero(self._exact_set.contains(whole))
        if len(exact_rows):
            exact = (pl.DataFrame({"row": exact_rows.astype(np.int64), "whole": whole[exact_rows]})
                     .join(self.exact, on="whole").select(
                         "row", "item", pl.lit(0, pl.Int32).alias("n"), pl.lit([], pl.List(pl.UInt64)).alias("grams"),
                         pl.lit(1.0).alias("score"), pl.lit("exact").alias("method")))
            hits = pl.concat([exact, hits])
        return hits, present

    def numbers_agree(self, hits: pl.DataFrame, texts: pl.Series, min_share: float) -> pl.DataFrame:
        """Hits whose text holds at least `min_share` of the item's distinctive numbers."""
        if not hits.height:
            return hits
        rows = hits["row"].unique().sort()
        positions = pl.DataFrame({"pos": np.arange(len(rows), dtype=np.int64), "row": rows})
        text_numbers = numbers_of(texts.gather(rows)).rename({"row": "pos"}).join(positions, on="pos").drop("pos")
        share = (hits.select("row", "item").join(self.numbers, on="item")
                 .join(text_numbers.with_columns(pl.lit(True).alias("_has")), on=["row", "num"], how="left")
                 .group_by("row", "item").agg((pl.col("_has").fill_null(False).mean()).alias("_share")))
        return hits.join(share, on=["row", "item"], how="left").filter(
            pl.col("_share").fill_null(1.0) >= min_share).drop("_share")
