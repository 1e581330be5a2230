"""`curate divergence`: per-trace teacher-student divergence and reference perplexity.

Scores that `select` can use to keep the traces a student learns most from:

* ``divergence__kd`` - mean per-token divergence (forward KL by default, with the tail bucket)
  between the cached teacher top-k and the student, over the trace's completion tokens: one
  student forward pass, no teacher (teacher-guided / divergence-aware data selection).
* ``divergence__student_nll`` and ``divergence__teacher_nll`` - mean negative log-likelihood of
  the realised completion tokens under the student, and under the teacher (read from the
  cache's ``token_logprob``, free).
* ``divergence__ref_ppl`` - perplexity of the completion under a reference model (``reference``),
  tokenized with that model's own tokenizer: a common yardstick across teachers.
* ``divergence__tokens`` - completion tokens scored.

Traces without a cache row get nulls for the cache-based scores (counted as ``not_in_cache``).
The cache is found by trace id: setup indexes the cache's ``trace_id`` column only (file, row
group, row), and each batch reads just the row groups it needs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curate.stage import BatchResult, Resources, Stage, StageConfig
from curate.trainer.sequences import THINK_FORMAT, trace_sequences


class DivergenceConfig(StageConfig):
    cache: str | None = Field(None, description="topk-v1 cache (a cache-logits step folder) for teacher scores.")
    student: str | None = Field(None, description="Student model folder: divergence__kd and student_nll need it and the cache.")
    reference: str | None = Field(None, description="Reference model folder for divergence__ref_ppl.")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="Divergence per token.")
    tail: bool = Field(True, description="Compare with a tail bucket for the mass outside the top-k.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    token_budget: int = Field(16384, ge=1, description="Padded tokens per forward batch.")
    position_chunk: int = Field(1024, ge=1, description="Positions per LM-head chunk.")
    max_tokens: int = Field(32768, ge=2, description="Reference scoring: longer sequences are cut.")
    think_format: str = THINK_FORMAT
    system_prompt: str | None = None


class _CacheIndex:
    """trace_id -> (file, row group, row) of a cache; row groups read on demand, the last kept."""

    def __init__(self, path: str):
        import polars as pl

        from curate.trainer.topk_format import cache_files, read_meta

        self.meta = read_meta(path)
        self.files = cache_files(path)
        frames = []
        for f_index, file in enumerate(self.files):
            parquet = pq.ParquetFile(file)
            for group in range(parquet.metadata.num_row_groups):
                ids = parquet.read_row_group(group, columns=["trace_id"]).column("trace_id")
                frames.append(pl.DataFrame({"trace_id": pl.from_arrow(ids).cast(pl.String)}).with_columns(
                    pl.lit(f_index, pl.Int32).alias("file"), pl.lit(group, pl.Int32).alias("group"),
                    pl.int_range(pl.len(), dtype=pl.Int64).alias("row")))
        self.index = pl.concat(frames) if frames else pl.DataFrame(
            {"trace_id": [], "file": [], "group": [], "row": []},
            schema={"trace_id": pl.String, "file": pl.Int32, "group": pl.Int32, "row": pl.Int64})
        self._last: tuple[tuple[int, int], pa.Table] | None = None

    def _group(self, file: int, group: int) -> pa.Table:
        if self._last is None or self._last[0] != (file, group):
            self._last = ((file, group), pq.ParquetFile(self.files[file], memory_map=True).read_row_group(group))
        return self._last[1]

    def lookup(self, trace_ids: pa.Array) -> tuple[np.ndarray, pa.Table | None]:
        """Positions (within ``trace_ids``) found in the cache and their cache rows, in order."""
        import polars as pl

        wanted = pl.DataFrame({"trace_id": pl.from_arrow(trace_ids)}).with_row_index("pos")
        hits = wanted.join(self.index, on="trace_id", how="inner").sort("pos")
        if hits.is_empty():
            return np.zeros(0, np.int64), None
        pieces = []
        for (file, group), part in hits.group_by(["file", "group"], maintain_order=True):
            pieces.append((part["pos"].to_numpy(), self._group(file, group).take(pa.array(part["row"].to_numpy()))))
        positions = np.concatenate([p for p, _ in pieces])
        order = np.argsort(positions, kind="stable")
        table = pa.concat_tables([t for _, t in pieces]).take(pa.array(order))
        return positions[order], table


def score_sequences(model, seqs, starts, *, device, token_budget, position_chunk, topk=None, loss="forward_kl",
                    tail=True) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: mean NLL of its completion tokens and (with ``topk`` = (ids, logprobs,
    pos_offsets)) mean divergence to the cached teacher; one forward pass, chunked LM head."""
    import torch

    from curate.trainer.losses import kd_loss_per_token
    from curate.trainer.teacher import _logits, _pad, _positions, budget_batches, hidden_states

    nll = np.full(len(seqs), np.nan)
    div = np.full(len(seqs), np.nan)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    with torch.inference_mode():
        for group in budget_batches(lengths, token_budget):
            batch = [seqs[i] for i in group]
            batch_starts = [int(starts[i]) for i in group]
            ids, mask = _pad(batch, 0)
            flat, targets = _positions(batch, batch_starts, ids.shape[1])
            hidden = hidden_states(model, ids.to(device), mask.to(device))
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.from_numpy(flat).to(device))
            targets_t = torch.from_numpy(targets).to(device)
            tok_nll, tok_div = [], []
            if topk is not None:
                t_ids = np.concatenate([topk[0][topk[2][i]:topk[2][i + 1]] for i in group])
                t_lp = np.concatenate([topk[1][topk[2][i]:topk[2][i + 1]] for i in group])
            for start in range(0, picked.shape[0], position_chunk):
                logits = _logits(model, picked[start:start + position_chunk])
                chunk_targets = targets_t[start:start + position_chunk]
                tok_nll.append(torch.nn.functional.cross_entropy(logits, chunk_targets, reduction="none"))
                if topk is not None:
                    sl = slice(start, start + position_chunk)
                    tok_div.append(kd_loss_per_token(
                        logits, torch.from_numpy(t_ids[sl].astype(np.int64)).to(device),
                        torch.from_numpy(t_lp[sl].astype(np.float32)).to(device), kind=loss, tail=tail))
            per_nll = torch.cat(tok_nll).cpu().numpy() if tok_nll else np.zeros(0)
            per_div = torch.cat(tok_div).cpu().numpy() if tok_div else None
            offset = 0
            for row, seq, start in zip(group, batch, batch_starts, strict=True):
                n = len(seq) - start
                nll[row] = per_nll[offset:offset + n].mean() if n else np.nan
                if per_div is not None:
                    div[row] = per_div[offset:offset + n].mean() if n else np.nan
                offset += n
    return nll, div


class DivergenceStage(Stage[DivergenceConfig]):
    name = "divergence"
    version = "1"
    config_model = DivergenceConfig
    description = "Per-trace teacher-student divergence (from the logit cache) and reference-model perplexity."
    example = ("curate divergence runs/demo --input runs/demo/05-select --cache runs/demo/06-cache_logits "
               "--student /models/Qwen2.5-0.5B --reference /models/Qwen2.5-1.5B")
    cli = ("divergence",)
    requires = ("trace_id", "prompt", "reasoning", "answer")
    score_namespace = "divergence"
    resources = Resources(cpus=2, gpus=1, stateful=True)
    batch_rows = 256

    def output_fields(self) -> list[pa.Field]:
        return [pa.field(self.col("kd"), pa.float32()), pa.field(self.col("student_nll"), pa.float32()),
                pa.field(self.col("teacher_nll"), pa.float32()), pa.field(self.col("ref_ppl"), pa.float32()),
                pa.field(self.col("tokens"), pa.int32())]

    def setup(self) -> None:
        from curate.trainer.teacher import claim_device, load_causal_lm, load_tokenizer
        from curate.trainer.topk_format import tokenizer_hash

        cfg = self.config
        if not (cfg.cache or cfg.reference):
            raise ValueError("divergence needs --cache (teacher scores) and/or --reference (perplexity)")
        if cfg.student and not cfg.cache:
            raise ValueError("divergence --student needs --cache: the divergence is to the cached teacher")
        self.device = claim_device(cfg.device)
        self.index = _CacheIndex(cfg.cache) if cfg.cache else None
        self.student = self.reference = None
        if cfg.student:
            tok = load_tokenizer(cfg.student)
            self.index.meta.check_tokenizer(tokenizer_hash(tok), what=f"student {cfg.student}")
            self.student = load_causal_lm(cfg.student, device=self.device, dtype=cfg.dtype)
        if cfg.reference:
            self.ref_tokenizer = load_tokenizer(cfg.reference)
            self.reference = load_causal_lm(cfg.reference, device=self.device, dtype=cfg.dtype)

    def teardown(self) -> None:
        self.student = self.reference = None

    def process(self, batch: pa.Table) -> BatchResult:
        from curate.trainer.topk_format import view

        cfg, n = self.config, batch.num_rows
        kd = np.full(n, np.nan, np.float32)
        s_nll = np.full(n, np.nan, np.float32)
        t_nll = np.full(n, np.nan, np.float32)
        ref = np.full(n, np.nan, np.float32)
        tokens = np.zeros(n, np.int32)
        counts: Counter[str] = Counter()
        if self.index is not None:
            found, rows = self.index.lookup(batch.column("trace_id"))
            counts["not_in_cache"] = n - len(found)
            if rows is not None:
                v = view(rows, self.index.meta)
                seqs = [v.sequence(i) for i in range(v.rows)]
                n_pos = np.diff(v.pos_offsets)
                sums = np.add.reduceat(v.token_logprob.astype(np.float64), v.pos_offsets[:-1]) if len(v.token_logprob) else 0
                t_nll[found] = np.where(n_pos > 0, -sums / np.maximum(n_pos, 1), np.nan)
                tokens[found] = n_pos
                if self.student is not None:
                    nll, div = score_sequences(self.student, seqs, v.completion_start, device=self.device,
                                               token_budget=cfg.token_budget, position_chunk=cfg.position_chunk,
                                               topk=(v.topk_ids, v.topk_logprobs, v.pos_offsets), loss=cfg.loss,
                                               tail=cfg.tail)
                    s_nll[found], kd[found] = nll, div
        if self.reference is not None:
            seqs, has = trace_sequences(self.ref_tokenizer, batch, max_tokens=cfg.max_tokens,
                                        think_format=cfg.think_format, system=cfg.system_prompt)
            nll, _ = score_sequences(self.reference, seqs.input_ids, seqs.completion_start, device=self.device,
                                     token_budget=cfg.token_budget, position_chunk=cfg.position_chunk)
            ref[np.flatnonzero(has)] = np.exp(nll)
            counts["ref_scored"] = int(has.sum())
        out = batch
        for name, values in (("kd", kd), ("student_nll", s_nll), ("teacher_nll", t_nll), ("ref_ppl", ref)):
            out = out.append_column(self.col(name), pa.array(values, pa.float32(), mask=np.isnan(values)))
        out = out.append_column(self.col("tokens"), pa.array(tokens, pa.int32()))
        return BatchResult(out, counts=counts)


def cache_step_of(run: Path) -> Path | None:
    """The newest finished cache-logits step of a run, if any."""
    from curate.runs import list_steps

    steps = [s for s in list_steps(run) if s.complete and s.table == "logits"]
    return steps[-1].path if steps else None
