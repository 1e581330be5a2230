"""`curate export`: the curated set (and its logit cache) in the formats other trainers read.

| format                 | file(s)                                  | consumer                               |
|------------------------|------------------------------------------|----------------------------------------|
| trl                    | train.jsonl: messages (+reasoning_content)| TRL SFTTrainer (conversational)        |
| trl-prompt-completion  | train.jsonl: prompt / completion         | TRL SFTTrainer (prompt-completion)     |
| sharegpt               | train.jsonl + dataset_info.json          | LLaMA-Factory (formatting: sharegpt)   |
| alpaca                 | train.jsonl + dataset_info.json          | LLaMA-Factory (formatting: alpaca)     |
| axolotl                | train.jsonl + axolotl.yaml               | axolotl `type: chat_template`          |
| openai                 | train.jsonl                              | OpenAI fine-tuning (chat)              |
| axolotl-kd             | train.parquet + axolotl.yaml             | axolotl KD plugin (needs --cache)      |
| trl-kd                 | train.parquet                            | `TopkCollator` + a TRL compute_loss    |

Text formats are built with polars expressions (no per-row Python) and streamed batch by batch.
The assistant text is the reasoning in think tags followed by the answer (`THINK_FORMAT`), the
same text the cache and `curate train` use; `trl` keeps the reasoning apart in
``reasoning_content`` for chat templates that render it themselves.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.trainer.sequences import THINK_FORMAT

TEXT_FORMATS = ("trl", "trl-prompt-completion", "sharegpt", "alpaca", "axolotl", "openai")
KD_FORMATS = ("axolotl-kd", "trl-kd")
FORMATS = TEXT_FORMATS + KD_FORMATS
_TEXT_COLUMNS = ["trace_id", "prompt", "reasoning", "answer"]


def resolve_traces(path: Path) -> list[Path]:
    """Parquet files of the curated traces: a step folder, Parquet path, or a run directory (its
    latest `select` step, else its latest traces step)."""
    from curate.io import input_files
    from curate.runs import list_steps

    path = Path(path)
    if path.is_dir() and not (path / "_manifest.json").exists() and not any(path.glob("part-*.parquet")):
        steps = [s for s in list_steps(path) if s.complete]
        chosen = [s for s in steps if s.manifest.stage == "select"] or [s for s in steps if s.table == "traces"]
        if not chosen:
            raise FileNotFoundError(f"run {path} has no finished traces step to export")
        path = chosen[-1].path
    return input_files(path)


def _batches(files: list[Path], columns: list[str], rows: int = 8192) -> Iterator[pa.Table]:
    for file in files:
        present = [c for c in columns if c in pq.read_schema(file).names]
        for batch in pq.ParquetFile(file).iter_batches(batch_size=rows, columns=present):
            yield pa.Table.from_batches([batch])


def completion_expr(think_format: str = THINK_FORMAT) -> pl.Expr:
    """Polars expression: reasoning + answer -> assistant text, following ``think_format``."""
    pieces: list[pl.Expr] = []
    for literal, field, _, _ in string.Formatter().parse(think_format):
        if literal:
            pieces.append(pl.lit(literal))
        if field:
            if field not in ("reasoning", "answer"):
                raise ValueError(f"think_format may use {{reasoning}} and {{answer}}, not {{{field}}}")
            pieces.append(pl.col(field).fill_null("").str.strip_chars() if field == "reasoning"
                          else pl.col(field).fill_null(""))
    has_reasoning = pl.col("reasoning").fill_null("").str.strip_chars().str.len_chars() > 0
    return pl.when(has_reasoning).then(pl.concat_str(pieces)).otherwise(pl.col("answer").fill_null(""))


def _msg(role: str, content: pl.Expr, **extra: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.alias("content"), *[v.alias(k) for k, v in extra.items()])


def text_frame(table: pa.Table, fmt: str, *, system: str | None, think_format: str) -> pl.DataFrame:
    frame = pl.from_arrow(table).with_columns(
        pl.col("prompt").cast(pl.String), pl.col("reasoning").cast(pl.String), pl.col("answer").cast(pl.String))
    completion = completion_expr(think_format)
    prompt = pl.col("prompt").fill_null("")
    sys_msgs = [_msg("system", pl.lit(system))] if system else []
    if fmt == "trl":
        user = _msg("user", prompt, reasoning_content=pl.lit(None, pl.String))
        bot = _msg("assistant", pl.col("answer").fill_null(""), reasoning_content=pl.col("reasoning"))
        sys_r = [_msg("system", pl.lit(system), reasoning_content=pl.lit(None, pl.String))] if system else []
        return frame.select(pl.concat_list([*sys_r, user, bot]).alias("messages"))
    if fmt == "trl-prompt-completion":
        return frame.select(pl.concat_list([*sys_msgs, _msg("user", prompt)]).alias("prompt"),
                            pl.concat_list([_msg("assistant", completion)]).alias("completion"))
    if fmt in ("axolotl", "openai"):
        return frame.select(pl.concat_list([*sys_msgs, _msg("user", prompt), _msg("assistant", completion)])
                            .alias("messages"))
    if fmt == "sharegpt":
        turns = pl.concat_list([pl.struct(pl.lit("human").alias("from"), prompt.alias("value")),
                                pl.struct(pl.lit("gpt").alias("from"), completion.alias("value"))])
        cols = [turns.alias("conversations")] + ([pl.lit(system).alias("system")] if system else [])
        return frame.select(cols)
    if fmt == "alpaca":
        cols = [prompt.alias("instruction"), pl.lit("").alias("input"), completion.alias("output")]
        return frame.select(cols + ([pl.lit(system).alias("system")] if system else []))
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _dataset_info(fmt: str, name: str, file_name: str, system: bool) -> dict[str, Any]:
    if fmt == "sharegpt":
        columns = {"messages": "conversations", **({"system": "system"} if system else {})}
        return {name: {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
                       "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                "assistant_tag": "gpt"}}}
    columns = {"prompt": "instruction", "query": "input", "response": "output", **({"system": "system"} if system else {})}
    return {name: {"file_name": file_name, "formatting": "alpaca", "columns": columns}}


def export(
    source: Path,
    out: Path,
    fmt: str,
    *,
    cache: Path | None = None,
    system: str | None = None,
    think_format: str = THINK_FORMAT,
    name: str = "curated",
    kd_style: str = "chat_template",
) -> dict[str, Any]:
    """Write ``fmt`` into folder ``out``; returns a summary (files, rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt in KD_FORMATS:
        if cache is None:
            raise ValueError(f"--format {fmt} exports the logit cache: pass --cache")
        return _export_kd(Path(source), Path(cache), out, fmt, system=system, think_format=think_format,
                          kd_style=kd_style)
    files = resolve_traces(Path(source))
    target = out / "train.jsonl"
    tmp = target.with_suffix(".jsonl.tmp")
    rows = 0
    with open(tmp, "wb") as handle:
        for table in _batches(files, _TEXT_COLUMNS):
            frame = text_frame(table, fmt, system=system, think_format=think_format)
            frame.write_ndjson(handle)
            rows += frame.height
    tmp.replace(target)
    written = [target]
    if fmt in ("sharegpt", "alpaca"):
        info = out / "dataset_info.json"
        info.write_text(json.dumps(_dataset_info(fmt, name, target.name, bool(system)), indent=2) + "\n")
        written.append(info)
    if fmt == "axolotl":
        written.append(_axolotl_yaml(out, {"path": str(target), "type": "chat_template", "field_messages": "messages",
                                           "ds_type": "json"}))
    return {"format": fmt, "rows": rows, "files": [str(p) for p in written]}


def _axolotl_yaml(out: Path, dataset: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    import yaml

    path = out / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**(extra or {}), "datasets": [dataset]}, sort_keys=False))
    return path


# -- the logit cache for other trainers -------------------------------------------------------
def _nested(flat: pa.Array, k: int, pos_offsets: np.ndarray) -> pa.ListArray:
    """Flat [positions * k] values -> list<list<value>[k]> per row."""
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, k, dtype=np.int32)), flat)
    return pa.ListArray.from_arrays(pa.array(pos_offsets.astype(np.int32)), inner)


def _export_kd(source: Path, cache: Path, out: Path, fmt: str, *, system: str | None, think_format: str,
               kd_style: str) -> dict[str, Any]:
    from curate.trainer.topk_format import CacheReader, decode_compact, view

    reader = CacheReader(cache)
    meta, k = reader.meta, reader.meta.k
    texts = None
    if fmt == "axolotl-kd" and kd_style == "chat_template":
        frames = [pl.from_arrow(t) for t in _batches(resolve_traces(source), _TEXT_COLUMNS)]
        texts = pl.concat(frames).unique("trace_id", keep="first") if frames else None
    target = out / "train.parquet"
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for table in reader.tables():
            plain, plain_meta = decode_compact(table, meta)
            if fmt == "trl-kd":
                piece = plain.replace_schema_metadata(plain_meta.to_metadata())
            elif kd_style == "chat_template":
                piece = _axolotl_chat_rows(plain, plain_meta, texts, system, think_format)
            else:
                piece = _axolotl_tokenized_rows(view(plain, plain_meta), plain, k)
            if writer is None:
                writer = pq.ParquetWriter(target.with_suffix(".parquet.tmp"), piece.schema, compression="zstd")
            writer.write_table(piece)
            rows += piece.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"logit cache {cache} has no rows")
    target.with_suffix(".parquet.tmp").replace(target)
    written = [target]
    if fmt == "axolotl-kd":
        dataset = ({"path": str(target), "ds_type": "parquet", "type": "axolotl.integrations.kd.chat_template",
                    "field_messages": "messages", "logprobs_field": "logprobs"} if kd_style == "chat_template"
                   else {"path": str(target), "ds_type": "parquet"})
        written.append(_axolotl_yaml(out, dataset, {
            "plugins": ["axolotl.integrations.kd.KDPlugin"], "kd_trainer": True, "kd_ce_alpha": 0.1,
            "kd_alpha": 0.9, "kd_temperature": 1.0}))
    return {"format": fmt, "rows": rows, "files": [str(p) for p in written], "k": k, "teacher": meta.teacher}


def _axolotl_chat_rows(plain: pa.Table, meta, texts: pl.DataFrame | None, system: str | None,
                       think_format: str) -> pa.Table:
    """messages + per completion token a vLLM-style list of {token: "token_id:N", logprob}
    (right-aligned with the tokenized chat, as axolotl's KD chat_template strategy expects)."""
    if texts is None:
        raise ValueError("axolotl-kd needs the curated traces (the source) for the messages")
    keys = pl.DataFrame({"trace_id": pl.from_arrow(plain.column("trace_id")).cast(pl.String)}).with_row_index("row")
    joined = keys.join(texts, on="trace_id", how="left", maintain_order="left")
    if joined["prompt"].null_count():
        missing = joined.filter(pl.col("prompt").is_null())["trace_id"].head(3).to_list()
        raise ValueError(f"cache rows {missing} have no trace in the source")
    messages = text_frame(joined.drop("row").to_arrow(), "axolotl", system=system, think_format=think_format)
    ids = pc.list_flatten(plain.column("topk_ids"))
    lps = pc.list_flatten(plain.column("topk_logprobs")).cast(pa.float32())
    tokens = pc.binary_join_element_wise("token_id:", pc.cast(ids, pa.string()), "")
    entries = pa.StructArray.from_arrays([tokens.combine_chunks() if hasattr(tokens, "combine_chunks") else tokens,
                                          lps.combine_chunks() if hasattr(lps, "combine_chunks") else lps],
                                         names=["token", "logprob"])
    from curate.trainer.topk_format import _position_offsets

    logprobs = _nested(entries, meta.k, _position_offsets(plain))
    return pa.table({"trace_id": plain.column("trace_id"), "messages": messages.to_arrow().column("messages"),
                     "logprobs": logprobs})


def _axolotl_tokenized_rows(v, plain: pa.Table, k: int) -> pa.Table:
    """Pre-tokenized KD rows: input_ids, labels (-100 on the prompt), attention_mask and per
    position target_token_ids / target_logprobs / target_mask, position t holding the teacher's
    distribution for token t (prompt positions masked)."""
    n_tok = len(v.input_ids)
    t_ids = np.tile(np.arange(k, dtype=np.int32), (n_tok, 1))
    t_lp = np.full((n_tok, k), -1e4, dtype=np.float32)  # masked; finite so every reader accepts it
    t_mask = np.zeros((n_tok, k), dtype=np.int8)
    labels = np.full(n_tok, -100, dtype=np.int64)
    for i in range(v.rows):  # per row slices of flat arrays: vectorised within each row
        lo, st, hi = v.id_offsets[i], v.completion_start[i], v.id_offsets[i + 1]
        p0, p1 = v.pos_offsets[i], v.pos_offsets[i + 1]
        t_ids[lo + st:hi] = v.topk_ids[p0:p1]
        t_lp[lo + st:hi] = v.topk_logprobs[p0:p1]
        t_mask[lo + st:hi] = 1
        labels[lo + st:hi] = v.input_ids[lo + st:hi]
    offsets = v.id_offsets
    return pa.table({
        "trace_id": plain.column("trace_id"),
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(v.input_ids.astype(np.int64))),
        "attention_mask": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(np.ones(n_tok, np.int8))),
        "labels": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(labels)),
        "target_token_ids": _nested(pa.array(t_ids.ravel()), k, offsets),
        "target_logprobs": _nested(pa.array(t_lp.ravel()), k, offsets),
        "target_mask": _nested(pa.array(t_mask.ravel()), k, offsets),
    })


# -- a collator for TRL / plain PyTorch ------------------------------------------------------------
class TopkCollator:
    """Pads topk-v1 rows (as `datasets` yields them from a `trl-kd` export or the cache itself)
    into tensors for a causal LM trainer:

    ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding) and
    ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [B, T, k], where [b, t] is the teacher's
    distribution for token ``labels[b, t]`` (shift with the logits exactly like the labels).
    Use it as ``data_collator`` of a TRL ``SFTTrainer`` whose ``compute_loss`` calls
    `kd_loss_from_batch` (see docs/trainer.md)."""

    def __init__(self, k: int, pad_id: int = 0):
        self.k, self.pad_id = k, pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        b, k = len(features), self.k
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        t_ids = torch.zeros((b, width, k), dtype=torch.long)
        t_lp = torch.zeros((b, width, k), dtype=torch.float32)
        for r, f in enumerate(features):
            seq = torch.as_tensor(np.asarray(f["input_ids"], dtype=np.int64))
            start, n = int(f["completion_start"]), len(seq)
            ids[r, :n], mask[r, :n] = seq, 1
            labels[r, start:n] = seq[start:]
            t_ids[r, start:n] = torch.as_tensor(np.asarray(f["topk_ids"], dtype=np.int64).reshape(-1, k))
            t_lp[r, start:n] = torch.as_tensor(np.asarray(f["topk_logprobs"], dtype=np.float32).reshape(-1, k))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "teacher_topk_ids": t_ids, "teacher_topk_logprobs": t_lp}


def kd_loss_from_batch(logits, batch: dict[str, Any], *, mix: float = 1.0, kind: str = "forward_kl",
                       temperature: float = 1.0, beta: float = 0.5, tail: bool = True):
    """Mean-per-token ``mix * KD + (1 - mix) * CE`` for full-sequence logits [B, T, V] and a
    `TopkCollator` batch (shifts logits against labels and teacher rows)."""
    from curate.trainer.losses import combined_loss

    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = logits[:, :-1][keep]
    parts = combined_loss(logits, labels[keep], batch["teacher_topk_ids"][:, 1:][keep],
                          batch["teacher_topk_logprobs"][:, 1:][keep], mix=mix, kind=kind,
                          temperature=temperature, beta=beta, tail=tail)
    return parts["loss"] / keep.sum().clamp(min=1)
