"""Word hashes and word n-gram shingle hashes of a batch of texts, read straight from the Arrow
UTF-8 buffer by two small compiled loops (numba, GIL released).

Why compiled loops: lower-casing, separator replacement, `split` and a hash per list element as
polars operations, or the same as numpy array passes, cost about 20 us per 1 kB trace, most of a
MinHash dedup; one pass over the bytes costs about 1 ns a byte.

Words are the maximal runs of bytes that are not separators (ASCII whitespace and punctuation,
which covers LaTeX markup, and NBSP), lower-cased: ASCII bytes by table; a word holding any
non-ASCII byte is lower-cased again by polars (full Unicode rules; a small share of words), so the
words are exactly those of `text.lower()` split on the separators.

A word's hash is FNV-1a over its lower-cased bytes, then a splitmix64
finaliser. A shingle is the polynomial (multiplier _MULT) of its n word hashes, finalised again.
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

SEPARATORS = [*"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", " ", "\n", "\t", "\r", "\u00a0"]
_MULT = np.uint64(0x9E3779B97F4A7C15)
_SEP = np.zeros(256, dtype=np.bool_)
_SEP[[ord(c) for c in SEPARATORS if ord(c) < 128]] = True
_SEP_U8 = _SEP.astype(np.uint8)
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[65:91] += 32


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a polynomial combination over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@numba.njit(nogil=True, cache=True, inline="always")
def _mix1(x):
    x = (x ^ (x >> numba.uint64(30))) * numba.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> numba.uint64(27))) * numba.uint64(0x94D049BB133111EB)
    return x ^ (x >> numba.uint64(31))


@numba.njit(nogil=True, cache=True)
def _words_kernel(data, offsets, sep, lower, raw, starts, counts):
    """Per row: the raw FNV-1a hash of every word and (start byte * 2 + has-a-non-ASCII-byte).
    Branch-free: every byte stores into slot w and w moves on only when a word ends, so word
    boundaries cost no mispredicted branches (2 ns a byte against 6.5 with branches). NBSP is
    left inside its word (which is then wide); `_finish_words` reports it. Returns (words, words
    with a non-ASCII byte)."""
    prime = numba.uint64(0x100000001B3)
    basis = numba.uint64(0xCBF29CE484222325)
    w = 0
    n_wide = 0
    for r in range(len(offsets) - 1):
        first = w
        h = basis
        wide = numba.int64(0)
        start = offsets[r]
        end = offsets[r + 1]
        for i in range(start, end):
            b = data[i]
            s = numba.int64(sep[b])
            raw[w] = h
            starts[w] = start * 2 + wide
            emit = s & numba.int64(i != start)
            w += emit
            n_wide += emit & wide
            keep = numba.uint64(s) - numba.uint64(1)  # all ones inside a word, 0 on a separator
            h = (((h ^ numba.uint64(lower[b])) * prime) & keep) | (basis & ~keep)
            wide = (wide | numba.int64(b >> 7)) & (s - 1)
            start += (i + 1 - start) * s
        raw[w] = h
        starts[w] = start * 2 + wide
        emit = numba.int64(end != start)
        w += emit
        n_wide += emit & wide
        counts[r] = w - first
    return w, n_wide


@numba.njit(nogil=True, cache=True)
def _finish_words(data, offsets, counts, sep, raw, starts, wide_at):
    """Finalises the word hashes in place (splitmix64) and lists each word with a non-ASCII byte
    as (start byte, word index, end byte). Returns the number of such words, or -1 when one of
    them holds an NBSP (C2 A0), a separator the branch-free loop does not split on."""
    nw = 0
    w = 0
    for r in range(len(counts)):
        row_end = offsets[r + 1]
        for _ in range(counts[r]):
            raw[w] = _mix1(raw[w])
            if starts[w] & 1:
                s = starts[w] >> 1
                e = s
                while e < row_end and not sep[data[e]]:
                    if data[e] == 0xC2 and e + 1 < row_end and data[e + 1] == 0xA0:
                        return -1
                    e += 1
                wide_at[nw, 0] = s
                wide_at[nw, 1] = w
                wide_at[nw, 2] = e
                nw += 1
            w += 1
    return nw


@numba.njit(nogil=True, cache=True)
def _shingles_kernel(words, offsets, ngram, out, per_row):
    """Polynomial hash of every run of `ngram` consecutive words in a row (one of all its words
    when the row is shorter). Returns the number written."""
    mult = numba.uint64(0x9E3779B97F4A7C15)
    o = 0
    for r in range(len(offsets) - 1):
        s, e = offsets[r], offsets[r + 1]
        n = e - s
        runs = n - ngram + 1 if n >= ngram else (1 if n > 0 else 0)
        for i in range(runs):
            h = numba.uint64(0)
            for k in range(ngram):  # a short row's missing words count as 0, as a padded window
                h = h * mult + (words[s + i + k] if s + i + k < e else numba.uint64(0))
            out[o] = _mix1(h)
            o += 1
        per_row[r] = runs
    return o


def _buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(utf-8 bytes, int64 row offsets starting at 0) of a string Series, without copying text."""
    arr = texts.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.cast(arr, pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data, offsets


def _without_nbsp(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """NBSP (C2 A0) is a separator of two bytes: replaced by two spaces (the same length, so the
    offsets hold), in a copy."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    lead = np.flatnonzero(data[lo: hi - 1] == 0xC2) + lo
    lead = lead[data[lead + 1] == 0xA0]
    if not len(lead):
        return data
    data = data.copy()
    data[lead] = data[lead + 1] = 0x20
    return data


def _word_hashes(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word hashes, words per row, [k, 3] start byte / word index / end byte of wide words)."""
    rows = len(offsets) - 1
    capacity = (int(offsets[-1] - offsets[0]) + rows) // 2 + rows + 1  # a word takes a byte and a separator
    raw, starts = np.empty(capacity, np.uint64), np.empty(capacity, np.int64)
    counts = np.empty(rows, np.int64)
    n, n_wide = _words_kernel(data, offsets, _SEP_U8, _LOWER, raw, starts, counts)
    wide_at = np.empty((n_wide, 3), np.int64)
    n_wide = _finish_words(data, offsets, counts, _SEP, raw, starts, wide_at)
    if n_wide < 0:  # rare: split on the NBSPs by making them spaces, and start again
        data = _without_nbsp(data, offsets)
        n, n_wide = _words_kernel(data, offsets, _SEP_U8, _LOWER, raw, starts, counts)
        wide_at = np.empty((n_wide, 3), np.int64)
        n_wide = _finish_words(data, offsets, counts, _SEP, raw, starts, wide_at)
    return raw[:n], counts, wide_at[:n_wide]


def word_hashes(texts: pl.Series, *, nfkc: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """u64 hash of every word of the texts, flat, with row offsets (len(texts)+1). NFKC is
    optional: it folds only compatibility characters (ligatures, full-width forms), which barely
    move a 5-gram Jaccard, and costs as much as all the rest."""
    texts = texts.cast(pl.Utf8).fill_null("")
    if nfkc:
        non_ascii = texts.str.len_bytes() != texts.str.len_chars()
        if non_ascii.any():
            idx = non_ascii.arg_true()
            texts = texts.scatter(idx, texts.gather(idx).str.normalize("NFKC"))
    data, offsets = _buffers(texts)
    hashes, counts, wide = _word_hashes(data, offsets)
    if len(wide):  # Unicode lower-casing of the words with a non-ASCII byte, then the same hash
        lengths = wide[:, 2] - wide[:, 0]
        word_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.arange(word_offsets[-1], dtype=np.int64) + np.repeat(wide[:, 0] - word_offsets[:-1], lengths)
        words = pa.LargeStringArray.from_buffers(len(wide), pa.py_buffer(word_offsets), pa.py_buffer(data[gather]))
        lowered, _, _ = _word_hashes(*_buffers(pl.Series(words).str.to_lowercase()))
        hashes[wide[:, 1]] = lowered
    return hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def shingle_hashes(texts: pl.Series, ngram: int, *, nfkc: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat u64 n-gram hashes, row offsets, words per row). A text shorter than `ngram` words
    gives one shingle of all its words; an empty text gives none."""
    words, offsets = word_hashes(texts, nfkc=nfkc)
    n_words = np.diff(offsets)
    out = np.empty(len(words) + len(n_words), np.uint64)
    per_row = np.empty(len(n_words), np.int64)
    n = _shingles_kernel(words, offsets, ngram, out, per_row)
    return out[:n], np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64), n_words
