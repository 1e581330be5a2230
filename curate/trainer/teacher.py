"""Teacher forward passes that return only the top-k: the compute core of `cache-logits`.

* **Token-budget batches.** Sequences are sorted by length and grouped so that
  ``rows x longest <= token_budget``: little padding, a steady memory peak.
* **No [tokens x vocab] float32 tensor.** The decoder runs once; its last hidden states at the
  completion positions go through the LM head ``position_chunk`` rows at a time, and each chunk's
  float32 logits give log-sum-exp, top-k and the realised token's log-prob before the next chunk
  is made. Peak extra memory is ``position_chunk x vocab x 4`` bytes, whatever the batch size.
* **Overlap.** On CUDA only the [positions x k] results leave the GPU, copied on a side stream
  into pinned memory; the host turns batch i into Arrow while the GPU computes batch i+1.
* **Devices.** bf16 on CUDA, float32 on CPU (tiny models in tests). Data parallel = one worker
  per GPU: each worker claims a free GPU with a lock file (`claim_device`), or uses the device
  Ray / CUDA_VISIBLE_DEVICES gives it.

torch and transformers are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("curate.trainer")
_LOCKS: list[Any] = []  # open lock files: held for the worker's lifetime


def claim_device(requested: str = "auto") -> str:
    """The torch device for this worker. ``auto``: a free CUDA GPU if any (several workers on one
    machine each lock a different one), else CPU."""
    import torch

    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if count == 1:
        return "cuda:0"
    lock_dir = Path(tempfile.gettempdir()) / "curate-gpu-locks"
    lock_dir.mkdir(exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-")
    for index in range(count):
        handle = open(lock_dir / f"{visible}-{index}.lock", "w")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _LOCKS.append(handle)
        return f"cuda:{index}"
    log.warning("all %d GPUs are claimed by other workers; sharing cuda:0", count)
    return "cuda:0"


def cpu_bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX): without them bf16 matmuls
    are emulated and slower than float32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(name: str, device: str) -> str:
    """``auto`` for a teacher forward pass: bf16 on CUDA and on CPUs with native bf16, else float32.
    (Training keeps ``torch_dtype``'s float32-on-CPU default: bf16 weights would stall AdamW.)"""
    if name != "auto":
        return name
    return "bfloat16" if device.startswith("cuda") or cpu_bf16_supported() else "float32"


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def model_revision(path: str, config: Any) -> str:
    """A hub commit when the model came from the hub cache, else a hash of config.json and the
    weight files' names and sizes (cheap, and changes when the weights do)."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    folder = Path(path)
    if not folder.is_dir():
        return "unknown"
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()[:16]


def load_causal_lm(path: str, *, device: str, dtype: str = "auto", attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(device)
    model.eval()
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def budget_batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Row indices grouped longest-first so that ``len(group) * longest <= token_budget`` (a
    sequence longer than the budget gets a batch of its own)."""
    order = np.argsort(-lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, token_budget // max(longest, 1))
        groups.append(order[start:start + size])
        start += size
    return groups


@dataclass
class TopkResult:
    """One sequence's cached values: [n, k] top-k ids and log-probs, [n] realised log-probs."""

    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    token_logprob: np.ndarray


def _pad(seqs: list[np.ndarray], pad_id: int):
    import torch

    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _positions(seqs: list[np.ndarray], starts: list[int], longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into [B * T] of the hidden states that predict each completion token, and
    the tokens they predict (host-side, so no device sync is needed to find them)."""
    rows = []
    for row, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        rows.append(row * longest + np.arange(start - 1, len(seq) - 1, dtype=np.int64))
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    targets = np.concatenate([s[st:] for s, st in zip(seqs, starts, strict=True)]).astype(np.int64)
    return flat, targets


def hidden_states(model: Any, input_ids, attention_mask):
    """Last hidden states of the decoder, without running the LM head over every position."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _logits(model: Any, hidden):
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2 style soft-capping is part of the model's distribution
        logits = cap * (logits / cap).tanh()
    return logits


def block_topk(x, k: int, block: int = 64):
    """``x.topk(k, dim=-1)`` for [N, V] rows, about 4x faster on CPU for a large V.

    The row is cut into blocks of ``block`` columns. Every top-k element lies in one of the k
    blocks with the largest maxima (a block outside them has k blocks above it, each holding an
    element larger than all of its own), so one cheap max per block, a top-k over the block
    maxima and a top-k over those k blocks' ``k x block`` columns give the exact answer; only
    the order of exactly tied values may differ from torch.topk's."""
    import torch

    n, vocab = x.shape
    blocks = -(-vocab // block)
    if blocks <= 2 * k:  # nothing to gain: one small top-k
        return x.topk(k, dim=-1)
    full = (vocab // block) * block
    maxima = x[:, :full].reshape(n, -1, block).amax(dim=-1)
    if full < vocab:
        maxima = torch.cat([maxima, x[:, full:].amax(dim=-1, keepdim=True)], dim=1)
    best = maxima.topk(k, dim=-1).indices
    cols = (best[:, :, None] * block + torch.arange(block, device=x.device)).reshape(n, -1)
    outside = cols >= vocab  # the last block's columns past the vocabulary
    values = x.gather(1, cols.clamp_max(vocab - 1)).masked_fill_(outside, float("-inf"))
    top_v, where = values.topk(k, dim=-1)
    return top_v, cols.gather(1, where)


def chunked_topk(model: Any, hidden, targets, k: int, chunk: int):
    """top-k log-probs, their ids and the target's log-prob for [N, H] hidden states, ``chunk``
    rows of float32 logits at a time."""
    import torch

    vals, ids, tok = [], [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = _logits(model, hidden[start:start + chunk])
        top_v, top_i = block_topk(logits, k)
        realised = logits.gather(1, targets[start:start + chunk, None])
        # log-sum-exp shifted by the top-1 that topk already found: one pass fewer over the
        # [chunk x vocab] block than torch.logsumexp, and exp runs in place (no second block).
        top1 = top_v[:, :1]
        lse = logits.sub_(top1).exp_().sum(dim=-1, keepdim=True).log_().add_(top1)
        vals.append(top_v - lse)
        ids.append(top_i.to(torch.int32))
        tok.append(realised - lse)
        del logits
    if not vals:
        empty = torch.zeros((0, k), device=hidden.device)
        return empty, empty.to(torch.int32), torch.zeros(0, device=hidden.device)
    return torch.cat(vals), torch.cat(ids), torch.cat(tok).squeeze(1)


class _HostCopy:
    """Device results copied to pinned host memory on a side stream (CUDA), or as is (CPU)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None

    def start(self, tensors: tuple) -> tuple:
        import torch

        if not self.cuda:
            return tensors, None
        self.stream.wait_stream(torch.cuda.current_stream(tensors[0].device))
        with torch.cuda.stream(self.stream):
            host = []
            for t in tensors:
                t.record_stream(self.stream)  # keep the device tensor alive until the copy ran
                buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buffer.copy_(t, non_blocking=True)
                host.append(buffer)
            event = torch.cuda.Event()
            event.record(self.stream)
        return tuple(host), event

    @staticmethod
    def finish(handle: tuple) -> tuple[np.ndarray, ...]:
        host, event = handle
        if event is not None:
            event.synchronize()
        return tuple(t.numpy() for t in host)


def forward_topk(
    model: Any,
    seqs: list[np.ndarray],
    starts: np.ndarray,
    *,
    k: int,
    token_budget: int,
    position_chunk: int,
    device: str,
    pad_id: int = 0,
    per_sequence: bool | None = None,
) -> Iterator[tuple[np.ndarray, list[TopkResult]]]:
    """Yield (row indices, results) per token-budget batch; batch i's host work overlaps batch
    i+1's device work on CUDA."""
    import torch

    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    # On CPU a long sequence alone already fills the matmuls, and without padding attention takes
    # the causal (flash) kernel instead of the masked one; GPUs need the batch.
    per_sequence = device == "cpu" if per_sequence is None else per_sequence
    copier = _HostCopy(device)
    pending: tuple | None = None
    with torch.inference_mode():
        for group in budget_batches(lengths, token_budget):
            batch = [seqs[i] for i in group]
            batch_starts = [int(starts[i]) for i in group]
            ids, mask = _pad(batch, pad_id)
            flat, targets = _positions(batch, batch_starts, ids.shape[1])
            non_blocking = device.startswith("cuda")
            ids = ids.pin_memory().to(device, non_blocking=True) if non_blocking else ids
            mask = mask.pin_memory().to(device, non_blocking=True) if non_blocking else mask
            flat_t = torch.from_numpy(flat).to(device, non_blocking=non_blocking)
            targets_t = torch.from_numpy(targets).to(device, non_blocking=non_blocking)
            if per_sequence:
                picked = _unpadded_hidden(model, batch, batch_starts)
            else:
                hidden = hidden_states(model, ids, mask)
                picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_t)
                del hidden
            handle = copier.start(chunked_topk(model, picked, targets_t, k, position_chunk))
            if pending is not None:
                yield _split(*pending)
            pending = (group, batch, batch_starts, handle)
        if pending is not None:
            yield _split(*pending)


def _unpadded_hidden(model: Any, batch: list[np.ndarray], starts: list[int]):
    """Hidden states at the completion positions, one unpadded sequence per decoder call."""
    import torch

    picked = []
    for seq, start in zip(batch, starts, strict=True):
        ids = torch.from_numpy(seq.astype(np.int64))[None]
        picked.append(hidden_states(model, ids, None)[0, start - 1:-1])
    return torch.cat(picked)


def _split(group: np.ndarray, batch: list[np.ndarray], starts: list[int], handle: tuple):
    vals, ids, tok = _HostCopy.finish(handle)
    out, offset = [], 0
    for seq, start in zip(batch, starts, strict=True):
        n = len(seq) - start
        out.append(TopkResult(ids[offset:offset + n], vals[offset:offset + n], tok[offset:offset + n]))
        offset += n
    return group, out


def describe_model(path: str) -> dict[str, Any]:
    """Vocab size (the LM head's rows) and revision from the config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"vocab_size": int(text.vocab_size), "revision": model_revision(path, config),
            "config": json.loads(config.to_json_string())}
