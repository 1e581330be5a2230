"""`curate train`: a reference student trainer on the curated set and its topk-v1 cache.

A working, readable reference (transformers + torch, one process), not a rival to full trainers:

* **Data.** With ``cache``: the cache rows give the token ids (the student must share the
  teacher's tokenizer; a different one is refused) and the teacher top-k. Without: a traces step
  is tokenized the same way the cache would be (CE only).
* **Packing.** Sequences are packed first-fit-decreasing into rows of ``token_budget`` tokens
  with position ids restarting per sequence and no attention mask: transformers then builds a
  block-diagonal causal mask (or uses varlen flash attention), so packed sequences never see each
  other. ``packing=False`` pads length-sorted batches instead.
* **Loss.** ``mix * KD + (1 - mix) * CE`` over completion tokens (`losses.py`), normalised by the
  completion tokens of the whole accumulation window so accumulation equals a bigger batch.
* **Checkpoints / resume.** ``out/checkpoint-NNNNNN/`` holds the model, optimizer, scheduler, RNG
  and the data cursor; a rerun with the same ``out`` resumes from the newest one and continues
  with the exact micro-batch it would have run next.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curate.trainer.sequences import THINK_FORMAT

log = logging.getLogger("curate.trainer")
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student: str = Field(description="Student model folder (transformers).")
    out: str = Field(description="Output folder: checkpoints, train_log.jsonl, final/.")
    cache: str | None = Field(None, description="topk-v1 cache step folder or file (enables KD).")
    data: str | None = Field(None, description="Traces step folder or Parquet (CE only, when no cache).")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1, description="JSD mixture weight of the teacher.")
    temperature: float = Field(1.0, gt=0)
    mix: float = Field(1.0, ge=0, le=1, description="Weight of KD; 1 - mix goes to cross-entropy.")
    tail: bool = Field(True, description="Keep a tail bucket for the mass outside the top-k.")
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int | None = Field(None, description="Optimizer steps [default: epochs over the data].")
    epochs: int = 1
    token_budget: int = Field(8192, ge=8, description="Tokens per micro-batch (a packed row, or rows x longest).")
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = 1.0
    packing: bool = True
    max_tokens: int = 32768
    save_every: int = Field(200, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    think_format: str = THINK_FORMAT
    system_prompt: str | None = None
    log_every: int = 1


# -- data ---------------------------------------------------------------------------------
@dataclass
class Example:
    input_ids: np.ndarray
    start: int  # completion_start
    topk_ids: np.ndarray | None  # [n, k]
    topk_logprobs: np.ndarray | None


class _Source:
    """Row groups of the cache (or of a traces step) as lists of Examples, in a seeded order."""

    def __init__(self, cfg: TrainConfig, tokenizer: Any, tokenizer_digest: str):
        from curate.trainer.topk_format import CacheReader

        self.cfg, self.tokenizer = cfg, tokenizer
        if cfg.cache:
            self.reader = CacheReader(cfg.cache, tokenizer_hash=tokenizer_digest,
                                      what=f"the student tokenizer ({cfg.student})")
            self.files = self.reader.files
        elif cfg.data:
            from curate.io import input_files

            self.reader = None
            self.files = input_files(Path(cfg.data))
        else:
            raise ValueError("curate train needs --cache (KD) or --data (cross-entropy only)")
        import pyarrow.parquet as pq

        self.groups = [(f, g) for f in self.files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]

    def order(self, epoch: int) -> list[tuple[Path, int]]:
        groups = list(self.groups)
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(groups)
        return groups

    def examples(self, file: Path, group: int) -> list[Example]:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(file, memory_map=True).read_row_group(group)
        if self.reader is not None:
            from curate.trainer.topk_format import view

            v = view(table, self.reader.meta)
            return [
                Example(v.sequence(i), int(v.completion_start[i]),
                        v.topk_ids[v.pos_offsets[i]:v.pos_offsets[i + 1]],
                        v.topk_logprobs[v.pos_offsets[i]:v.pos_offsets[i + 1]])
                for i in range(v.rows)
            ]
        from curate.trainer.sequences import trace_sequences

        seqs, _ = trace_sequences(self.tokenizer, table, max_tokens=self.cfg.max_tokens,
                                  think_format=self.cfg.think_format, system=self.cfg.system_prompt)
        return [Example(s, int(st), None, None) for s, st in zip(seqs.input_ids, seqs.completion_start, strict=True)]


def pack(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into bins of at most ``budget`` tokens."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def micro_batches(examples: list[Example], cfg: TrainConfig, rng: random.Random) -> list[list[Example]]:
    lengths = [len(e.input_ids) for e in examples]
    if cfg.packing:
        groups = pack(lengths, cfg.token_budget)
    else:
        from curate.trainer.teacher import budget_batches

        groups = [list(g) for g in budget_batches(np.asarray(lengths), cfg.token_budget)]
    rng.shuffle(groups)
    return [[examples[i] for i in g] for g in groups]


@dataclass
class Cursor:
    """Where the data stream stands: epoch, row group within the epoch order, micro-batch within
    the row group."""

    epoch: int = 0
    group: int = 0
    batch: int = 0


def stream(source: _Source, cfg: TrainConfig, cursor: Cursor) -> Iterator[tuple[Cursor, list[Example]]]:
    """Micro-batches from ``cursor`` on; each comes with the cursor of the one after it."""
    epoch, group_pos, batch_pos = cursor.epoch, cursor.group, cursor.batch
    if not source.groups:
        return
    while epoch < cfg.epochs or cfg.max_steps is not None:
        order = source.order(epoch)
        for g in range(group_pos, len(order)):
            rng = random.Random(cfg.seed * 7919 + epoch * 104729 + g)
            batches = micro_batches(source.examples(*order[g]), cfg, rng)
            for b in range(batch_pos if g == group_pos else 0, len(batches)):
                nxt = Cursor(epoch, g, b + 1) if b + 1 < len(batches) else Cursor(epoch, g + 1, 0)
                yield nxt, batches[b]
        epoch, group_pos, batch_pos = epoch + 1, 0, 0


# -- tensors ------------------------------------------------------------------------------
def collate(batch: list[Example], cfg: TrainConfig, pad_id: int, device: str) -> dict[str, Any]:
    """Model inputs, the flat indices of the positions that predict completion tokens, their
    targets and the teacher top-k rows in the same order."""
    import torch

    if cfg.packing:
        total = sum(len(e.input_ids) for e in batch)
        ids = np.concatenate([e.input_ids for e in batch]).astype(np.int64)[None]
        pos = np.concatenate([np.arange(len(e.input_ids)) for e in batch])[None]
        offsets = np.cumsum([0] + [len(e.input_ids) for e in batch])[:-1]
        inputs = {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(pos)}
        row_of = [0] * len(batch)
        width = total
    else:
        width = max(len(e.input_ids) for e in batch)
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for r, e in enumerate(batch):
            ids[r, : len(e.input_ids)] = e.input_ids
            mask[r, : len(e.input_ids)] = 1
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        offsets = np.zeros(len(batch), dtype=np.int64)
        row_of = list(range(len(batch)))
    flat, targets, tk_ids, tk_lp = [], [], [], []
    for e, off, row in zip(batch, offsets, row_of, strict=True):
        n = len(e.input_ids) - e.start
        flat.append(row * width + off + np.arange(e.start - 1, len(e.input_ids) - 1))
        targets.append(e.input_ids[e.start:])
        if e.topk_ids is not None:
            tk_ids.append(e.topk_ids[:n])
            tk_lp.append(e.topk_logprobs[:n])
    out = {k: v.to(device) for k, v in inputs.items()}
    out["flat"] = torch.from_numpy(np.concatenate(flat).astype(np.int64)).to(device)
    out["targets"] = torch.from_numpy(np.concatenate(targets).astype(np.int64)).to(device)
    if tk_ids:
        out["topk_ids"] = torch.from_numpy(np.concatenate(tk_ids).astype(np.int64)).to(device)
        out["topk_logprobs"] = torch.from_numpy(np.concatenate(tk_lp).astype(np.float32)).to(device)
    return out


def student_logits_at(model: Any, inputs: dict[str, Any]):
    """Student logits only at the positions that predict completion tokens ([N, V])."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    hidden = decoder(**kwargs, use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs["flat"])
    return model.get_output_embeddings()(picked)


# -- checkpoints ----------------------------------------------------------------------------
def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in Path(out).glob("checkpoint-*") if (p / STATE_FILE).exists())
    return found[-1] if found else None


def _save(out: Path, step: int, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, cursor: Cursor,
          history: list[dict], cfg: TrainConfig) -> Path:
    import torch

    target = out / f"checkpoint-{step:06d}"
    tmp = out / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, tmp / OPTIM_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({
        "step": step, "cursor": cursor.__dict__, "history": history, "config": cfg.model_dump()}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # a checkpoint exists whole or not at all
    old = sorted(p for p in out.glob("checkpoint-*") if p != target)
    for stale in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def _schedule(cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))

    return factor


def _count_steps(source: _Source, cfg: TrainConfig) -> int:
    """Optimizer steps of the whole run; from the cache's sequence lengths alone (no top-k read)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if source.reader is not None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        micro = 0
        for file, group in source.groups:
            ids = pq.ParquetFile(file).read_row_group(group, columns=["input_ids"]).column("input_ids")
            lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
            micro += len(micro_batches([Example(np.empty(n), 0, None, None) for n in lengths], cfg, random.Random(0)))
        micro *= cfg.epochs
    else:
        micro = sum(1 for _ in stream(source, cfg, Cursor()))
    return max(1, math.ceil(micro / cfg.grad_accum))


# -- the loop -------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, progress: bool = True) -> list[dict]:
    """Train; returns the per-step log (also in ``out/train_log.jsonl``)."""
    import torch
    from tqdm.auto import tqdm

    from curate.trainer.losses import combined_loss
    from curate.trainer.teacher import claim_device, load_causal_lm, load_tokenizer
    from curate.trainer.topk_format import tokenizer_hash

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.cache is None and cfg.mix > 0:
        cfg = cfg.model_copy(update={"mix": 0.0})  # no teacher: plain cross-entropy
    resume = latest_checkpoint(out)
    device = claim_device(cfg.device)
    tokenizer = load_tokenizer(str(resume) if resume else cfg.student)
    source = _Source(cfg, tokenizer, tokenizer_hash(tokenizer))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = load_causal_lm(str(resume) if resume else cfg.student, device=device, dtype=cfg.dtype)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = _count_steps(source, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total_steps))
    step, cursor, history = 0, Cursor(), []
    if resume is not None:
        state = json.loads((resume / STATE_FILE).read_text())
        blob = torch.load(resume / OPTIM_FILE, weights_only=False)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        random.setstate(blob["python_rng"])
        step, cursor, history = state["step"], Cursor(**state["cursor"]), state["history"]
        log.info("resuming from %s (step %d)", resume, step)
    log_path = out / "train_log.jsonl"
    # The log holds exactly the steps the model has seen (a killed run may have logged more).
    log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    pad_id = int(tokenizer.pad_token_id or 0)
    data = stream(source, cfg, cursor)
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not progress)
    while step < total_steps:
        window = []
        for _ in range(cfg.grad_accum):
            item = next(data, None)
            if item is None:
                break
            window.append(item)
        if not window:
            break
        tokens = sum(sum(len(e.input_ids) - e.start for e in batch) for _, batch in window)
        sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
        for _, batch in window:
            inputs = collate(batch, cfg, pad_id, device)
            logits = student_logits_at(model, inputs)
            parts = combined_loss(logits, inputs["targets"], inputs.get("topk_ids"), inputs.get("topk_logprobs"),
                                  mix=cfg.mix, kind=cfg.loss, temperature=cfg.temperature, beta=cfg.beta, tail=cfg.tail)
            (parts["loss"] / tokens).backward()
            for key in sums:
                sums[key] += float(parts[key].detach()) / tokens
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        cursor = window[-1][0]
        record = {"step": step, **{k: round(v, 6) for k, v in sums.items()}, "tokens": tokens,
                  "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        if step % cfg.log_every == 0:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if step % cfg.save_every == 0 or step == total_steps:
            _save(out, step, model, tokenizer, optimizer, scheduler, cursor, history, cfg)
    bar.close()
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return history
