"""Benchmark `cache-logits`: tokens/s and bytes/token against the naive baseline, same run.

Naive baseline (what a first script does): one forward pass per sequence, the full-vocabulary
log-probs kept (float32 on the device, then saved to disk as float16), top-k taken on the CPU.
Ours: token-budget batches, chunked LM head + log-softmax + top-k on the device, only [tokens x k]
leaves it, topk-v1 Parquet.

CPU mode (default): real reasoning traces (the demo data shipped in the package), a BPE tokenizer
trained on them and a random-weight Llama built from a config. GPU mode (``--device cuda``): a
Qwen2.5-0.5B-shaped model built from its config in bf16 over synthetic token sequences, tokens/s
against the forward-pass roofline ``measured bf16 matmul FLOP/s / (2 x params)``.

    python bench/cache_bench.py                       # CPU, writes docs/benchmarks.md
    python bench/cache_bench.py --rows 480 --max-tokens 2048
    python bench/cache_bench.py --device cuda --preset 0.5b --rows 512 --max-tokens 4096
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "curate" / "data" / "demo"
PRESETS = {  # shapes of public models, weights random
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


def demo_traces(rows: int) -> pa.Table:
    records = []
    for file in sorted(DEMO.glob("*.jsonl.gz")):
        with gzip.open(file, "rt") as handle:
            records.extend(json.loads(line) for line in handle)
    records = records[:rows]
    return pa.table({
        "trace_id": [f"{r['benchmark']}-{r['model']}-{r['idx']}" for r in records],
        "problem_id": [f"{r['benchmark']}-{r['idx']}" for r in records],
        "prompt": [r["question"] for r in records],
        "reasoning": [None] * len(records),
        "answer": [r["response"] for r in records],
    })


def build_model(folder: Path, preset: str, vocab: int, texts: list[str]) -> Path:
    """A BPE tokenizer trained on the traces and a random Llama of the preset's shape."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    shape = {**PRESETS[preset], "vocab_size": len(fast)}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=32768, bos_token_id=0, eos_token_id=1))
    model.save_pretrained(folder)
    return folder


def naive(model, seqs, starts, k: int, device: str, scratch: Path) -> dict:
    """Per-sequence forward, full-vocab float32 log-probs, top-k on the CPU, full log-probs saved."""
    import torch

    tokens = disk = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            ids = torch.as_tensor(seq.astype(np.int64), device=device)[None]
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)[start - 1:-1].cpu().numpy()
            top = np.argpartition(-logprobs, k, axis=1)[:, :k]
            _ = np.take_along_axis(logprobs, top, 1)
            path = scratch / f"naive-{i}.npy"
            np.save(path, logprobs.astype(np.float16))
            disk += path.stat().st_size
            path.unlink()
            tokens += len(seq) - start
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "bytes_per_token": disk / tokens}


def ours(stage, batch: pa.Table) -> tuple[dict, pa.Table]:
    import torch

    t0 = time.perf_counter()
    result = stage.process(batch)
    if stage.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    tokens = result.counts["positions"]
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}, result.table


def sizes(table: pa.Table, scratch: Path) -> dict[str, float]:
    from curate.trainer.topk_format import encode_compact, meta_of_schema, write_cache

    meta = meta_of_schema(table.schema)
    positions = int(sum(len(c.flatten()) for c in table.column("token_logprob").chunks))
    compact, cmeta = encode_compact(table, meta)
    out = {}
    for name, tbl, m in (("topk-v1", table, meta), ("compact", compact, cmeta)):
        out[f"{name} tuned"] = write_cache(scratch / f"{name}.parquet", tbl, m).stat().st_size / positions
        pq.write_table(tbl, scratch / f"{name}-default.parquet", compression="zstd")  # the runner's writer today
        out[f"{name} default-writer"] = (scratch / f"{name}-default.parquet").stat().st_size / positions
    return out


def matmul_flops(device: str) -> float:
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--naive-rows", type=int, default=None, help="rows for the baseline [default: --rows]")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()


    from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage
    from curate.trainer.topk_format import view

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        gpu = args.device.startswith("cuda")
        batch = demo_traces(args.rows)
        every = demo_traces(10**9)  # the tokenizer learns from every shipped trace
        texts = [t for t in every.column("answer").to_pylist() + every.column("prompt").to_pylist() if t]
        folder = build_model(scratch / "model", args.preset, args.vocab, texts)
        if gpu:  # synthetic sequences of realistic length: throughput does not depend on the text
            rng = np.random.default_rng(0)
            words = rng.integers(100, 20000, size=(args.rows, args.max_tokens // 2))
            batch = batch.set_column(4, "answer", pa.array([" ".join(map(str, w)) for w in words]))
        stage = CacheLogitsStage(CacheLogitsConfig(teacher=str(folder), k=args.k, device=args.device,
                                                   token_budget=args.token_budget, max_tokens=args.max_tokens))
        stage.setup()
        ours(stage, batch.slice(0, min(4, batch.num_rows)))  # warm-up (kernels, allocator)
        mine, table = ours(stage, batch)
        v = view(table, stage.meta)
        seqs = [v.sequence(i) for i in range(v.rows)]
        n_naive = min(args.naive_rows or len(seqs), len(seqs))
        base = naive(stage.model, seqs[:n_naive], v.completion_start[:n_naive], args.k, stage.device, scratch)
        disk = sizes(table, scratch)
        params = sum(p.numel() for p in stage.model.parameters())
        roofline = None
        if gpu:
            flops = matmul_flops(stage.device)
            roofline = {"matmul_tflops": flops / 1e12, "roofline_tok_s": flops / (2 * params)}
            roofline["fraction"] = mine["tok_s"] / roofline["roofline_tok_s"]

    speedup = mine["tok_s"] / base["tok_s"]
    lines = [
        f"Workload: {args.rows} traces ({mine['tokens']:,} completion tokens, max {args.max_tokens} tokens/sequence), "
        f"k={args.k}, preset `{args.preset}` ({params / 1e6:.1f}M params, vocab {stage.meta.vocab_size:,}), "
        f"device `{stage.device}`, {machine()}. Random weights (built from a config); the baseline ran on "
        f"{n_naive} sequences.",
        "",
        "| path | tokens/s | bytes/token on disk |",
        "|---|---:|---:|",
        f"| naive: per-sequence forward, full-vocab log-probs saved (fp16 .npy), top-k on CPU | {base['tok_s']:,.0f} "
        f"| {base['bytes_per_token']:,.0f} |",
        f"| cache-logits, topk-v1 (tuned writer / runner's default writer) | {mine['tok_s']:,.0f} "
        f"| {disk['topk-v1 tuned']:.1f} / {disk['topk-v1 default-writer']:.1f} |",
        f"| cache-logits, compact codec (tuned / default writer) | same | {disk['compact tuned']:.1f} / "
        f"{disk['compact default-writer']:.1f} |",
        "",
        f"Speed-up over naive: **{speedup:.1f}x** (goal >= 5x). Goals on disk at k=32: topk-v1 <= 120 B/token, "
        "compact <= 80 B/token (DistillKit's k=128 default: about 344).",
    ]
    if roofline:
        lines.append(f"Roofline: bf16 matmul {roofline['matmul_tflops']:.0f} TFLOP/s -> "
                     f"{roofline['roofline_tok_s']:,.0f} tokens/s; measured {roofline['fraction']:.0%} of it (goal >= 40%).")
    else:
        lines.append("GPU roofline: not measured here (no GPU); run `python bench/cache_bench.py --device cuda "
                     "--preset 0.5b --rows 512 --max-tokens 4096` on one.")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("cache" if not gpu else "cache-gpu", "## Logit cache (`curate cache-logits`)\n\n" + text)


if __name__ == "__main__":
    main()
