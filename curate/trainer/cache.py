"""`curate cache-logits`: the teacher's top-k distribution over every completion token, once.

Reads traces (a curated step), writes the `logits` table in the topk-v1 format (docs/topk-v1.md):
one row per (trace, teacher). The teacher is a transformers model path; the forward pass, the
chunked top-k and the GPU/host overlap live in `curate.trainer.teacher`.

Resume: the runner skips finished units; inside a unit every finished batch is kept in the unit's
scratch folder under a key made from its trace ids, so a killed run recomputes only the batches
it had not finished, and a row is never written twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curate.schemas.validate import empty_rejects
from curate.stage import BatchResult, Resources, Stage, StageConfig, reject_rows
from curate.trainer.sequences import THINK_FORMAT, trace_sequences
from curate.trainer.topk_format import (
    DEFAULT_K,
    DEFAULT_STEP,
    CacheMeta,
    build_plain_table,
    cache_fields,
    cache_schema,
    encode_compact,
    tokenizer_hash,
)


class CacheLogitsConfig(StageConfig):
    teacher: str = Field(description="Teacher model: a local transformers folder or hub id (already downloaded), or "
                         "vllm:MODEL_DIR for vLLM's prompt_logprobs.")
    teacher_name: str | None = Field(None, description="Name written in the cache's teacher column [default: the model folder name].")
    k: int = Field(DEFAULT_K, ge=1, le=1024, description="Top-k entries cached per token.")
    codec: Literal["plain", "compact"] = Field("plain", description="plain: int32 ids + float16 log-probs; compact: id gaps + uint8 log-prob steps.")
    compact_step: float = Field(DEFAULT_STEP, gt=0, le=1, description="Compact codec: nats per uint8 step (error <= step/2).")
    device: str = Field("auto", description="auto (a free GPU, else CPU), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: bf16 on GPU and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.")
    attn_implementation: str | None = Field(None, description="e.g. sdpa or flash_attention_2 [default: transformers' choice].")
    token_budget: int = Field(16384, ge=1, description="Padded tokens per forward batch (rows x longest).")
    position_chunk: int | None = Field(None, ge=1, description="Positions per LM-head/log-softmax chunk (peak = chunk x "
                                       "vocab x 4 bytes) [default: 1024 on GPU, 128 on CPU, where a small block stays in cache].")
    max_tokens: int = Field(32768, ge=2, description="Longer sequences are cut at the end of the completion.")
    think_format: str = Field(THINK_FORMAT, description="How reasoning and answer form the assistant turn.")
    system_prompt: str | None = Field(None, description="Optional system message before the prompt.")
    vllm_python: str | None = Field(None, description="vllm: teacher: interpreter that has vllm [default: this one if "
                                    "vllm imports here, else the .venv-vllm built by scripts/setup_vllm_cpu.sh].")
    vllm_engine_args: dict[str, str] = Field({}, description="vllm: teacher: engine arguments, values as JSON "
                                             "(max_model_len=4096, dtype=bfloat16).")


class CacheLogitsStage(Stage[CacheLogitsConfig]):
    name = "cache_logits"
    version = "1"
    config_model = CacheLogitsConfig
    description = "Cache the teacher's top-k log-probs over every completion token (topk-v1 Parquet)."
    example = "curate cache-logits runs/demo --teacher /models/Qwen2.5-7B-Instruct --k 32 --codec compact"
    cli = ("cache-logits",)
    table = "traces"
    output_table = "logits"
    requires = ("trace_id", "problem_id", "prompt", "reasoning", "answer")
    score_namespace = None
    # One worker per GPU; it keeps the model across units.
    resources = Resources(cpus=2, gpus=1, stateful=True)
    batch_rows = 256

    def __init__(self, config: CacheLogitsConfig | None = None):
        super().__init__(config)
        self._meta: CacheMeta | None = None
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        self.dtype = "float32"
        self.vllm = None

    # -- declarations ---------------------------------------------------------------------
    @property
    def meta(self) -> CacheMeta:
        """Cache metadata from the tokenizer and model config (no weights needed)."""
        if self._meta is None:
            from curate.trainer.teacher import describe_model, load_tokenizer
            from curate.trainer.vllm_teacher import model_dir

            path = model_dir(self.config.teacher)
            tokenizer = self.tokenizer or load_tokenizer(path)
            info = describe_model(path)
            self._meta = CacheMeta(
                teacher=self.config.teacher_name or Path(path.rstrip("/")).name,
                revision=info["revision"],
                tokenizer_hash=tokenizer_hash(tokenizer),
                k=self.config.k,
                vocab_size=info["vocab_size"],
                codec=self.config.codec,
                step=self.config.compact_step,
            )
        return self._meta

    def output_fields(self) -> list[pa.Field]:
        return cache_fields(self.meta)

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        from curate.trainer.teacher import claim_device, inference_dtype, load_causal_lm, load_tokenizer
        from curate.trainer.vllm_teacher import is_vllm_teacher

        if is_vllm_teacher(self.config.teacher):
            self._setup_vllm()
            return
        self.device = claim_device(self.config.device)
        self.tokenizer = load_tokenizer(self.config.teacher)
        self.dtype = inference_dtype(self.config.dtype, self.device)
        self.model = load_causal_lm(self.config.teacher, device=self.device, dtype=self.dtype,
                                    attn_implementation=self.config.attn_implementation)
        head = self.model.get_output_embeddings().weight.shape[0]
        if head != self.meta.vocab_size:  # trust the LM head over config.vocab_size
            self._meta = CacheMeta(**{**self.meta.__dict__, "vocab_size": int(head)})

    def _setup_vllm(self) -> None:
        from curate.trainer.teacher import load_tokenizer
        from curate.trainer.vllm_teacher import VllmTeacher, model_dir, parse_engine_args

        python = self.config.vllm_python
        if python is None:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                from curate.generators.vllm_env import vllm_python

                python = str(vllm_python())
        path = model_dir(self.config.teacher)
        self.tokenizer = load_tokenizer(path)  # the same files the engine loads
        self.device, self.dtype = "vllm", str(self.config.vllm_engine_args.get("dtype", "auto"))
        self.vllm = VllmTeacher(path, k=self.config.k, engine_args=parse_engine_args(self.config.vllm_engine_args),
                                python=python)

    def teardown(self) -> None:
        self.model = None
        if getattr(self, "vllm", None) is not None:
            self.vllm.close()
            self.vllm = None

    # -- work ----------------------------------------------------------------------------
    def _scratch_file(self, batch: pa.Table) -> Path | None:
        if self.unit_context is None:
            return None
        digest = hashlib.sha256("\x1f".join(batch.column("trace_id").to_pylist()).encode()).hexdigest()[:24]
        return self.unit_context.scratch / f"batch-{digest}.parquet"

    def process(self, batch: pa.Table) -> BatchResult:
        scratch = self._scratch_file(batch)
        if scratch is not None and scratch.exists():  # finished before a kill: reuse, do not recompute
            done = pq.read_table(scratch)
            counts = Counter(json.loads((done.schema.metadata or {}).get(b"curate.counts", b"{}")))
            counts["batches_resumed"] += 1
            rejects = pq.read_table(scratch.with_suffix(".rejects.parquet")) if scratch.with_suffix(
                ".rejects.parquet").exists() else empty_rejects()
            return BatchResult(done.cast(cache_schema(self.meta)), rejects=rejects, counts=counts)
        result = self._compute(batch)
        if scratch is not None:
            from curate.io import write_table

            if result.rejects.num_rows:
                write_table(scratch.with_suffix(".rejects.parquet"), result.rejects)
            # Written last: its presence means the whole batch (rows, rejects, counters) is done.
            write_table(scratch, result.table, metadata={"curate.counts": json.dumps(dict(result.counts))})
        return result

    def _compute(self, batch: pa.Table) -> BatchResult:
        from curate.trainer.teacher import forward_topk

        cfg, meta = self.config, self.meta
        seqs, has_completion = trace_sequences(self.tokenizer, batch, max_tokens=cfg.max_tokens,
                                               think_format=cfg.think_format, system=cfg.system_prompt)
        keep = np.flatnonzero(has_completion)
        counts: Counter[str] = Counter()
        results: list = [None] * len(keep)
        if getattr(self, "vllm", None) is not None:
            results = self.vllm.topk(seqs.input_ids, seqs.completion_start)
        else:
            for group, outs in forward_topk(self.model, seqs.input_ids, seqs.completion_start, k=cfg.k,
                                            token_budget=cfg.token_budget, position_chunk=cfg.position_chunk or (
                                                128 if self.device == "cpu" else 1024),
                                            device=self.device, pad_id=int(self.tokenizer.pad_token_id or 0)):
                for row, out in zip(group, outs, strict=True):
                    results[row] = out
        positions = int(sum(len(r.token_logprob) for r in results))
        k = cfg.k
        table = build_plain_table(
            CacheMeta(**{**meta.__dict__, "codec": "plain"}),
            trace_id=batch.column("trace_id").take(keep),
            problem_id=batch.column("problem_id").take(keep),
            input_ids=seqs.input_ids,
            completion_start=seqs.completion_start,
            topk_ids=np.concatenate([r.topk_ids for r in results]) if results else np.zeros((0, k), np.int32),
            topk_logprobs=np.concatenate([r.topk_logprobs for r in results]) if results else np.zeros((0, k)),
            token_logprob=np.concatenate([r.token_logprob for r in results]) if results else np.zeros(0),
        )
        if meta.codec == "compact":
            table, _ = encode_compact(table, CacheMeta(**{**meta.__dict__, "codec": "plain"}), step=meta.step)
        counts.update({"rows_cached": len(keep), "positions": positions, "tokens": int(seqs.lengths.sum()),
                       "truncated": int(seqs.truncated.sum())})
        result = BatchResult(table, counts=counts)
        missing = np.flatnonzero(~has_completion)
        if len(missing):
            unit = self.unit_context.unit if self.unit_context else None
            ids = batch.column("trace_id").take(missing).to_pylist()
            result.rejects = reject_rows(unit.path if unit else "traces", [int(i) for i in missing], "answer",
                                         "no completion to cache (reasoning and answer empty)", ids)
            counts["rejected_empty"] = len(missing)
        return result

    def summarize(self, counts: Counter[str]) -> dict:
        meta = self.meta
        return {"teacher": meta.teacher, "revision": meta.revision, "tokenizer_hash": meta.tokenizer_hash,
                "k": meta.k, "vocab_size": meta.vocab_size, "codec": meta.codec, "format": meta.format,
                "dtype": self.dtype}
