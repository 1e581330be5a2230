"""`hf:MODEL_PATH` teachers: transformers ``generate`` on CPU or GPU, batched, for small models.

Requests are grouped by seed (sample i of every problem shares seed + i), so one seeded
``generate`` call serves a whole group; batches are left-padded and sorted by prompt length to
waste little compute on padding. Sampled rows are reproducible for the same batch composition
(sampling draws from one generator per call), unlike vLLM's per-request seeds.

Log-probs are computed after generation by one teacher-forced forward pass over prompt +
completion: raw (temperature 1) log-probs, as topk-v1 stores them, and memory bounded by running
the output head over chunks of positions rather than keeping per-step logits of the whole batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.generators.backend_base import Backend, GenerationError, GenRequest, GenResult, OnResult
from curate.generators.teachers import local_revision

_HEAD_CHUNK = 512  # positions per output-head call when computing log-probs


class HFBackend(Backend):
    kind = "hf"

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        o = self.teacher.options
        device = o.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        args = dict(o.engine_args)
        args.setdefault("dtype", "auto")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.teacher.model)
            self.model = AutoModelForCausalLM.from_pretrained(self.teacher.model, **args).to(device).eval()
        except (OSError, ValueError) as exc:
            raise GenerationError(f"teacher {self.teacher.name}: cannot load {self.teacher.model}: {exc}") from None
        self.device = device
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        if self.revision is None:
            self.revision = getattr(self.model.config, "_commit_hash", None) or local_revision(self.teacher.model)
        self.provenance.update({"device": device, "dtype": str(self.model.dtype).removeprefix("torch.")})

    def _encode(self, request: GenRequest) -> list[int]:
        if request.messages is not None:
            text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(request.prompt))

    def run(self, requests: Sequence[GenRequest], on_result: OnResult) -> None:
        by_seed: dict[int, list[tuple[GenRequest, list[int]]]] = defaultdict(list)
        for request in requests:
            by_seed[request.seed].append((request, self._encode(request)))
        size = self.teacher.options.batch_size
        for seed, group in sorted(by_seed.items()):
            group.sort(key=lambda item: len(item[1]))
            for start in range(0, len(group), size):
                for result in self._generate(group[start:start + size], seed):
                    on_result(result)

    def _generate(self, batch: list[tuple[GenRequest, list[int]]], seed: int) -> list[GenResult]:
        import torch

        o = self.teacher.options
        width = max(len(ids) for _, ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": o.max_tokens, "pad_token_id": pad,
                                  "eos_token_id": sorted(self.eos_ids), "repetition_penalty": o.repetition_penalty}
        if o.temperature > 0:
            kwargs.update(do_sample=True, temperature=o.temperature, top_p=o.top_p,
                          top_k=o.top_k if o.top_k > 0 else None, min_p=o.min_p or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if o.stop:
            kwargs.update(stop_strings=list(o.stop), tokenizer=self.tokenizer)
        started = time.perf_counter()
        torch.manual_seed(seed)
        with torch.inference_mode():
            sequences = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        latency = time.perf_counter() - started
        results = []
        for row, (request, prompt_ids) in enumerate(batch):
            new = sequences[row, width:].tolist()
            cut = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
            finish = "stop" if cut is not None else "length"
            tokens = new if cut is None else new[:cut]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in o.stop:  # OpenAI semantics: the stop string ends the text and is not part of it
                at = text.find(stop)
                if at >= 0:
                    text, finish = text[:at], "stop"
            result = GenResult(request.problem_id, request.sample_index, request.seed, text=text, finish_reason=finish,
                               prompt_tokens=len(prompt_ids), completion_tokens=len(tokens), latency_s=latency,
                               detail={"batch_size": len(batch)})
            if o.logprobs and tokens:
                self._logprobs(result, prompt_ids, tokens, o.logprobs)
            results.append(result)
        return results

    def _logprobs(self, result: GenResult, prompt_ids: list[int], tokens: list[int], k: int) -> None:
        import torch

        ids = torch.tensor([prompt_ids + tokens], device=self.device)
        base = getattr(self.model, self.model.base_model_prefix)
        head = self.model.get_output_embeddings()
        with torch.inference_mode():
            hidden = base(input_ids=ids).last_hidden_state[0]
            # Position p predicts token p + 1: completion token j is predicted at len(prompt) + j - 1.
            start = len(prompt_ids) - 1
            positions = hidden[start:start + len(tokens)]
            targets = torch.tensor(tokens, device=self.device)
            top_ids, top_lps, sampled = [], [], []
            for offset in range(0, len(tokens), _HEAD_CHUNK):
                logprobs = torch.log_softmax(head(positions[offset:offset + _HEAD_CHUNK]).float(), dim=-1)
                values, indices = logprobs.topk(k, dim=-1)
                top_ids.append(indices.cpu())
                top_lps.append(values.cpu())
                chunk_targets = targets[offset:offset + _HEAD_CHUNK, None]
                sampled.append(logprobs.gather(-1, chunk_targets)[:, 0].cpu())
        result.token_ids = np.asarray(tokens, dtype=np.int32)
        result.topk_ids = torch.cat(top_ids).numpy().astype(np.int32)
        result.topk_logprobs = torch.cat(top_lps).numpy().astype(np.float32)
        result.token_logprob = torch.cat(sampled).numpy().astype(np.float32)

    def close(self) -> None:
        self.model = None
