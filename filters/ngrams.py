"""Hashed token n-grams as integer arrays, for decontamination (and anything else that matches text).

The pipeline, vectorised end to end (polars string kernels on the few rows that need them, then
numpy on byte and uint64 arrays; no Python loop per row):

1. `normalise`: NFKC and Unicode math symbols (only rows with non-ASCII text), LaTeX spellings that
   change nothing (`\\dfrac{1}{2}` and 1/2, `\\left(`, `\\text{cm}`, `\\le`/`\\leq`; only rows with a
   backslash), trailing decimal zeros (`12.0` -> `12`, `2.50` -> `2.5`).
2. `tokenise`: thousands separators (`1,000`, `1{,}000`, `1\\,000` -> `1000`) are removed on the raw
   bytes; a byte table lower-cases ASCII and turns everything but letters, digits and non-ASCII
   bytes into spaces (so `x^{2}` and `x^2` give the same tokens, and a LaTeX command's name is a
   word: `\\sqrt` and "sqrt" match); Arrow splits on whitespace and each token is hashed to uint64.
   A text becomes a run of hashes in one flat array plus row offsets (`Tokens`).
3. `Windows`: the hash of every n-token window from prefix sums of a polynomial hash (mod 2^64, odd
   base, so it is invertible): one cumulative sum serves every n, a window is two lookups and a
   multiply.
4. `HashSet`: membership of millions of window hashes in a sorted benchmark set via a packed
   bitmap that fits in cache (rejects almost every query) and `np.searchsorted` on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

# LaTeX commands dropped, their braced arguments stay: formatting only.
_LATEX_NOISE = (r"\\(?:left|right|bigl|bigr|biggl|biggr|big|bigg|displaystyle|textstyle"
                r"|scriptstyle|text|textbf|textit|textrm|mathrm|mathbf|mathit|mathsf|boldsymbol|mbox|hbox"
                r"|operatorname|quad|qquad|limits|nolimits|phantom|hspace|vspace|noindent|newline|dots|ldots"
                r"|cdots|circ)(?-u:\b)")
# Synonymous spellings mapped to one (replacements are Rust regex templates: `$1` is a group).
_LATEX_SYNONYMS = [(r"\\[dt]frac", "\\frac"), (r"\\[dt]binom", "\\binom"), (r"\\(le|ge|ne)(?-u:\b)", "\\${1}q")]
# Unicode symbols that plain-text and LaTeX copies spell as words.
_UNICODE_SYMBOLS = {"\u2264": " leq ", "\u2265": " geq ", "\u2260": " neq ", "\u03c0": " pi ", "\u221a": " sqrt ",
                    "\u221e": " infty ", "\u00d7": " ", "\u00b7": " ", "\u22c5": " ", "\u2212": "-", "\u00b0": " ",
                    "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": " ", "\u2014": " "}
# "12.50" -> "12.5", "12.0" -> "12." (a bare point is a separator anyway)
_TRAILING_ZEROS = (r"(\d\.\d*?)0+(?-u:\b)", "$1")

# byte -> byte: ASCII letters lower-cased, digits kept, non-ASCII bytes kept (letters of other
# scripts stay whole), operators kept as one-byte tokens (`(t+1)/t` is not `t + 1/t`), everything
# else a space.
_OPERATORS = b"+-=<>/"
_BYTE_MAP = np.full(256, ord(" "), np.uint8)
_BYTE_MAP[np.frombuffer(_OPERATORS, np.uint8)] = np.frombuffer(_OPERATORS, np.uint8)
_BYTE_MAP[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)] = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
_BYTE_MAP[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
_BYTE_MAP[128:] = np.arange(128, 256, dtype=np.uint8)
# token classes: 0 separator, 1 letter byte and 3 digit (runs of either form one token, so "25x"
# is "25", "x"), 2 operator (always its own token)
_CLASS = np.where(ord(" ") == _BYTE_MAP, 0, 1).astype(np.int8)
_CLASS[np.frombuffer(_OPERATORS, np.uint8)] = 2
_CLASS[ord("0"):ord("9") + 1] = 3
_IS_DIGIT = np.zeros(256, np.bool_)
_IS_DIGIT[ord("0"):ord("9") + 1] = True

_BASE = np.uint64(0x9E3779B97F4A7C15)
_BASE_INV = np.uint64(pow(int(_BASE), -1, 2**64))
TOKEN_SEED = 11


def _on_rows(series: pl.Series, mask: pl.Series, fn) -> pl.Series:
    """Apply a string transformation to the rows in `mask` only (most rows need none of them)."""
    idx = mask.arg_true()
    if not len(idx):
        return series
    return series.scatter(idx, fn(series.gather(idx).to_frame("t")).to_series())


def normalise(texts: pl.Series, *, nfkc: bool = True) -> pl.Series:
    """Text -> matching form (see module doc), before the byte-level tokeniser. Idempotent."""
    out = texts.fill_null("").cast(pl.Utf8).rename("t")
    non_ascii = out.str.len_bytes() != out.str.len_chars()

    def unicode_fix(frame: pl.DataFrame) -> pl.DataFrame:
        expr = pl.col("t").str.normalize("NFKC") if nfkc else pl.col("t")
        expr = expr.str.to_lowercase().str.replace_many(list(_UNICODE_SYMBOLS), list(_UNICODE_SYMBOLS.values()))
        return frame.select(expr)

    def latex_fix(frame: pl.DataFrame) -> pl.DataFrame:
        expr = pl.col("t").str.to_lowercase()
        for pattern, repl in _LATEX_SYNONYMS:
            expr = expr.str.replace_all(pattern, repl)
        return frame.select(expr.str.replace_all(_LATEX_NOISE, " "))

    out = _on_rows(out, non_ascii, unicode_fix)
    out = _on_rows(out, out.str.contains("\\", literal=True), latex_fix)
    return _on_rows(out, out.str.contains(".0", literal=True),
                    lambda f: f.select(pl.col("t").str.replace_all(*_TRAILING_ZEROS)))


def _string_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64, utf-8 bytes) of a string column, offsets starting at 0."""
    arr = texts.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if len(arr) else np.zeros(0, np.uint8)
    return offsets - offsets[0], data


def _drop_thousands_separators(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delete `,` / `{,}` / `\\,` between a digit and exactly three digits. Checked at comma bytes
    only (few), then the bytes are compacted and the offsets shifted by the bytes dropped before them."""
    commas = np.flatnonzero(data == ord(","))
    if not len(commas):
        return offsets, data
    padded = np.concatenate([np.zeros(4, np.uint8), data, np.zeros(5, np.uint8)])
    at = commas + 4  # position in `padded`

    def digit(pos: np.ndarray) -> np.ndarray:
        return _IS_DIGIT[padded[pos]]

    braces = (padded[at - 1] == ord("{")) & (padded[at + 1] == ord("}"))
    slash = padded[at - 1] == ord("\\")
    before = np.where(braces | slash, at - 2, at - 1)
    after = np.where(braces, at + 2, at + 1)
    ok = digit(before) & digit(after) & digit(after + 1) & digit(after + 2) & ~digit(after + 3)
    if not ok.any():
        return offsets, data
    # bytes strictly between the digit before and the digit after (1 to 3 of them), unpadded
    lo, width = before[ok] + 1 - 4, (after - before - 1)[ok]
    drop = np.repeat(lo, width) + (np.arange(width.sum()) - np.repeat(np.cumsum(width) - width, width))
    return offsets - np.searchsorted(drop, offsets), np.delete(data, drop)


@dataclass(frozen=True)
class Tokens:
    """Token hashes of many texts: row r owns hashes[offsets[r]:offsets[r+1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len rows + 1

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _mapped_bytes(texts: pl.Series, nfkc: bool) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) after normalisation, separator removal and the byte map."""
    offsets, data = _drop_thousands_separators(*_string_buffers(normalise(texts, nfkc=nfkc)))
    return offsets, _BYTE_MAP[data]


def token_strings(texts: pl.Series, *, nfkc: bool = True) -> pa.LargeListArray:
    """Normalised token strings per text (for the number check and for inspection)."""
    spaced, starts, ends, per_row = _boundaries(texts, nfkc)
    lengths = ends - starts
    token_offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(lengths, out=token_offsets[1:])
    gather = np.repeat(starts - token_offsets[:-1], lengths) + np.arange(token_offsets[-1])
    flat = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(token_offsets), pa.py_buffer(spaced[gather]))
    return pa.LargeListArray.from_arrays(pa.array(per_row - per_row[0], pa.int64()), flat)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a token's byte-polynomial hash becomes a well-spread uint64, so the
    window polynomial over token hashes cannot be fooled by re-splitting the same bytes."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _boundaries(texts: pl.Series, nfkc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, token starts, token ends, first token of each row + total): a token is a run of
    letter bytes, a run of digits, or one operator byte."""
    offsets, mapped = _mapped_bytes(texts, nfkc)
    # a space between rows, so no token runs from one row into the next
    spaced = np.insert(mapped, offsets[1:-1], ord(" ")) if len(offsets) > 2 else mapped
    row_start = offsets[:-1] + np.arange(len(offsets) - 1)
    cls = np.zeros(len(spaced) + 2, np.int8)
    cls[1:-1] = _CLASS[spaced]
    change = cls[1:] != cls[:-1]  # change[i]: between padded byte i and i+1
    solo = cls[1:-1] == 2
    word = cls[1:-1] != 0
    starts = np.flatnonzero(word & (change[:-1] | solo))
    ends = np.flatnonzero(word & (change[1:] | solo)) + 1
    per_row = np.searchsorted(starts, np.append(row_start, len(spaced) + 1))
    return spaced, starts, ends, per_row


def tokenise(texts: pl.Series, *, nfkc: bool = True) -> Tokens:
    """Token hashes per text, computed on the byte array: each token's hash is a polynomial over
    its bytes from one prefix sum (no per-token string is ever built)."""
    spaced, starts, ends, per_row = _boundaries(texts, nfkc)
    powers, inverse = _powers(len(spaced))
    prefix = np.zeros(len(spaced) + 1, np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(spaced.astype(np.uint64) * powers[:len(spaced)], out=prefix[1:])
        hashes = _mix((prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(np.uint64))
    return Tokens(hashes, (per_row - per_row[0]).astype(np.int64))


_POWERS: dict[str, np.ndarray] = {}


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^(k+1) and BASE^-(k+1) mod 2^64 for k < size; computed once and grown, never per chunk."""
    if len(_POWERS.get("p", ())) < size:
        size = max(size, 2 * len(_POWERS.get("p", ())), 1 << 16)
        with np.errstate(over="ignore"):
            _POWERS["p"] = np.full(size, _BASE, np.uint64).cumprod()
            _POWERS["i"] = np.full(size, _BASE_INV, np.uint64).cumprod()
    return _POWERS["p"][:size], _POWERS["i"][:size]


class Windows:
    """Prefix sums over `Tokens` so the hash of any window is two lookups and a multiply. Window
    hashes do not depend on where the window sits, so rows and benchmark items compare directly."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens
        total = len(tokens.hashes)
        powers, self._inv = _powers(total)
        self._prefix = np.zeros(total + 1, np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(tokens.hashes * powers[:total], out=self._prefix[1:])
        self._row_end = np.repeat(tokens.offsets[1:], tokens.lengths)

    def all_windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, valid) for every start position; `valid` is False where the window crosses into
        the next row. Slices, not gathers: this is the hot loop."""
        total = len(self.tokens.hashes)
        if total < n:
            return np.zeros(0, np.uint64), np.zeros(0, np.bool_)
        with np.errstate(over="ignore"):
            hashes = (self._prefix[n:] - self._prefix[:total - n + 1]) * self._inv[:total - n + 1]
        valid = np.arange(n, total + 1, dtype=np.int64) <= self._row_end[:total - n + 1]
        return hashes, valid

    def row_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.tokens.offsets, positions, side="right") - 1

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, hash) of every n-token window; rows shorter than n have none."""
        hashes, valid = self.all_windows(n)
        positions = np.flatnonzero(valid)
        return self.row_of(positions), hashes[positions]

    def whole(self) -> np.ndarray:
        """Hash of each row's entire token run (exact normalised match); empty rows get 0."""
        lengths = self.tokens.lengths
        out = np.zeros(self.tokens.rows, np.uint64)
        rows = np.flatnonzero(lengths > 0)
        start, end = self.tokens.offsets[rows], self.tokens.offsets[rows + 1]
        with np.errstate(over="ignore"):
            out[rows] = (self._prefix[end] - self._prefix[start]) * self._inv[start] + lengths[rows].astype(np.uint64)
        return out


class HashSet:
    """A sorted uint64 set with a packed-bit pre-filter (1 MiB, stays in cache): most queried
    n-grams are absent, and one bit read rejects them without a binary search."""

    def __init__(self, values: np.ndarray, *, bits: int = 23):
        self.values = np.unique(np.asarray(values, np.uint64))
        self._shift = np.uint64(64 - bits)
        slots = (self.values >> self._shift).astype(np.int64)
        self._bitmap = np.zeros(1 << (bits - 3), np.uint8)
        np.bitwise_or.at(self._bitmap, slots >> 3, (1 << (slots & 7)).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.values)

    def contains(self, query: np.ndarray) -> np.ndarray:
        slots = (query >> self._shift).astype(np.int64)
        maybe = np.flatnonzero((self._bitmap[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1)
        found = np.zeros(len(query), np.bool_)
        if len(maybe) and len(self.values):
            candidates = query[maybe]
            at = np.searchsorted(self.values, candidates).clip(max=len(self.values) - 1)
            found[maybe] = self.values[at] == candidates
        return found
