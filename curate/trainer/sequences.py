"""Traces -> token sequences, the one way every trainer-side tool sees a trace.

The cache, the reference trainer, divergence scoring and the exports must agree on the text a
student is trained on, or the cached teacher distributions would belong to other tokens. A trace
becomes a chat: ``[system?, user: prompt, assistant: completion]`` where the completion is the
reasoning wrapped in think tags followed by the answer (`THINK_FORMAT`, configurable). The
tokenizer's chat template renders the prompt part (with the generation prompt) and the whole
chat; the completion is what the whole adds after the prompt part. Prompt and completion are
tokenized separately, so ``completion_start`` is exact and no token straddles the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

THINK_FORMAT = "<think>\n{reasoning}\n</think>\n\n{answer}"


def completion_texts(reasoning: list[str | None], answer: list[str | None], think_format: str = THINK_FORMAT) -> list[str]:
    """Reasoning + answer as the assistant turn's text ('' when both are empty)."""
    out = []
    for r, a in zip(reasoning, answer, strict=True):
        r, a = (r or "").strip(), (a or "")
        out.append(think_format.format(reasoning=r, answer=a) if r else a)
    return out


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, prompts: list[str], completions: list[str], system: str | None = None) -> tuple[list[str], list[str]]:
    """(prompt text, completion text) per row, chat template applied. Without a chat template:
    the prompt followed by a newline, and the completion followed by the EOS token."""
    eos = tokenizer.eos_token or ""
    if not _has_template(tokenizer):
        return [p + "\n" for p in prompts], [c + eos for c in completions]
    prompt_texts, completion_out = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": completion}], tokenize=False)
        # Templates that rewrite the last turn (e.g. strip thinking): keep our text verbatim.
        tail = whole[len(head):] if whole.startswith(head) else completion + eos
        prompt_texts.append(head)
        completion_out.append(tail)
    return prompt_texts, completion_out


@dataclass
class Sequences:
    input_ids: list[np.ndarray]  # uint32 per row
    completion_start: np.ndarray  # int32
    truncated: np.ndarray  # bool

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)


def tokenize(
    tokenizer: Any, prompt_texts: list[str], completion_texts_: list[str], max_tokens: int, *, add_bos: bool = False
) -> Sequences:
    """Batch-tokenize (the Rust tokenizer parallelises) and cut rows longer than ``max_tokens``
    at the end of the completion; the prompt is kept whole, plus at least one completion token.
    ``add_bos``: prepend the BOS token (for tokenizers without a chat template; a template
    writes its own)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    bos = [bos_id] if add_bos and bos_id is not None else []
    prompt_ids = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"] if prompt_texts else []
    comp_ids = tokenizer(completion_texts_, add_special_tokens=False)["input_ids"] if completion_texts_ else []
    ids, starts, truncated = [], [], []
    for p, c in zip(prompt_ids, comp_ids, strict=True):
        head = bos + p
        seq = np.asarray(head + c, dtype=np.uint32)
        cut = len(seq) > max_tokens
        if cut:
            seq = seq[: max(max_tokens, len(head) + 1)]
        ids.append(seq)
        starts.append(len(head))
        truncated.append(cut)
    return Sequences(ids, np.asarray(starts, dtype=np.int32), np.asarray(truncated, dtype=bool))


def trace_sequences(
    tokenizer: Any, batch: pa.Table, *, max_tokens: int, think_format: str = THINK_FORMAT, system: str | None = None
) -> tuple[Sequences, np.ndarray]:
    """Token sequences of a traces batch and a mask of rows that have a completion at all."""
    completions = completion_texts(
        batch.column("reasoning").to_pylist(), batch.column("answer").to_pylist(), think_format
    )
    has_completion = np.array([bool(c.strip()) for c in completions], dtype=bool)
    prompts = [p or "" for p in batch.column("prompt").to_pylist()]
    keep = np.flatnonzero(has_completion)
    p_text, c_text = render(tokenizer, [prompts[i] for i in keep], [completions[i] for i in keep], system)
    seqs = tokenize(tokenizer, p_text, c_text, max_tokens, add_bos=not _has_template(tokenizer))
    return seqs, has_completion
