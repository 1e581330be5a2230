"""Benchmark `cache-logits`: tokens/s and bytes/token against the naive baseline, same run.

Naive baseline (what a first script does): one forward pass per sequence, the full-vocabulary
log-probs kept (float32 on the device, then saved to disk as float16), top-k taken on the CPU.
Ours: token-budget batches, chunked LM head + log-softmax + top-k on the device, only [tokens x k]
leaves it, topk-v1 Parquet.

CPU mode (default): real reasoning traces (the demo data shipped in the package), a BPE tokenizer
trained on them and a random-weight Llama built from a config. The machine is shared, so the paths
run in interleaved rounds (naive, ours fp32, ours bf16, naive, ...) and the speed-up is the median of
the per-round ratios; the load average is printed with the table.

GPU mode (``--gpu``): a Qwen2.5-0.5B-shaped model (494M parameters, vocab 151,936) built from its
config, bf16, over synthetic sequences; tokens/s against the forward-pass roofline
``measured bf16 matmul FLOP/s / (2 x params)`` (goal >= 40% on an H100).

    python bench/cache_bench.py                       # CPU, writes docs/benchmarks.md (section cache)
    python bench/cache_bench.py --rows 96 --rounds 5
    python bench/cache_bench.py --gpu                 # one GPU, writes section cache-gpu
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
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
    # vocab 32,000 as Llama-2 and Mistral (the BPE trained on the demo traces stops near 17.5k ids;
    # the LM head keeps the full width, as padded vocabularies do)
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000),
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
    # The preset's vocab when it is larger (the 0.5b LM head is a large share of its FLOPs); the
    # tokenizer then uses only the first ids, as padded vocabularies do.
    shape = {**PRESETS[preset], "vocab_size": max(len(fast), PRESETS[preset].get("vocab_size", 0))}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=32768, bos_token_id=0, eos_token_id=1))
    model.save_pretrained(folder)
    return folder


def naive(model, seqs, starts, k: int, device: str, scratch: Path) -> dict:
    """Per-sequence forward, full-vocab float32 log-probs, top-k on the CPU, full log-probs saved."""
    import torch

    tokens = disk = 0
    t0, c0 = time.perf_counter(), time.process_time()
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
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "cpu_tok_s": tokens / cpu,
            "bytes_per_token": disk / tokens}


def ours(stage, batch: pa.Table) -> tuple[dict, pa.Table]:
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    result = stage.process(batch)
    if stage.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = result.counts["positions"]
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "cpu_tok_s": tokens / cpu}, result.table


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

    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GPU mode: 0.5b preset, bf16, synthetic sequences, roofline")
    parser.add_argument("--rows", type=int, default=None, help="[default: 48 on CPU, 512 on GPU]")
    parser.add_argument("--naive-rows", type=int, default=None, help="rows for the baseline [default: --rows; 4 on GPU, where each saves a 1.2 GB array]")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of every path [default: 3; 2 on GPU]")
    parser.add_argument("--max-tokens", type=int, default=None, help="[default: 1024 on CPU, 4096 on GPU]")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000, help="BPE vocab to train (the model's may be larger)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="[default: tiny on CPU, 0.5b on GPU]")
    parser.add_argument("--device", default=None, help="[default: cpu, or cuda with --gpu]")
    parser.add_argument("--token-budget", type=int, default=None, help="[default: 8192 on CPU, 65536 on GPU]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every path [default: torch's]; 1 on a shared machine keeps the "
                             "per-CPU-second figures free of idle-spinning worker threads")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    gpu = args.gpu or (args.device or "").startswith("cuda")
    rows = args.rows or (512 if gpu else 48)
    max_tokens = args.max_tokens or (4096 if gpu else 1024)
    preset = args.preset or ("0.5b" if gpu else "tiny")
    device = args.device or ("cuda" if gpu else "cpu")
    budget = args.token_budget or (65536 if gpu else 8192)
    args.rounds = args.rounds or (2 if gpu else 3)

    from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage
    from curate.trainer.teacher import cpu_bf16_supported
    from curate.trainer.topk_format import view

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        batch = demo_traces(rows)
        every = demo_traces(10**9)  # the tokenizer learns from every shipped trace
        texts = [t for t in every.column("answer").to_pylist() + every.column("prompt").to_pylist() if t]
        folder = build_model(scratch / "model", preset, args.vocab, texts)
        if gpu:  # synthetic sequences of realistic length: throughput does not depend on the text
            rng = np.random.default_rng(0)
            words = rng.integers(100, 20000, size=(rows, max_tokens // 2))
            repeat = -(-rows // batch.num_rows)
            batch = pa.concat_tables([batch] * repeat).slice(0, rows)
            batch = batch.set_column(0, "trace_id", pa.array([f"t{i}" for i in range(rows)]))
            batch = batch.set_column(4, "answer", pa.array([" ".join(map(str, w)) for w in words]))
        dtypes = ["bfloat16"] if gpu else ["float32"] + (["bfloat16"] if cpu_bf16_supported() else [])
        stages = {}
        for dtype in dtypes:
            stage = CacheLogitsStage(CacheLogitsConfig(teacher=str(folder), k=args.k, device=device, dtype=dtype,
                                                       token_budget=budget, max_tokens=max_tokens))
            stage.setup()
            ours(stage, batch.slice(0, min(4, batch.num_rows)))  # warm-up (kernels, allocator)
            stages[dtype] = stage
        reference = stages[dtypes[0]]
        _, table = ours(reference, batch)
        v = view(table, reference.meta)
        seqs = [v.sequence(i) for i in range(v.rows)]
        n_naive = min(args.naive_rows or (4 if gpu else len(seqs)), len(seqs))
        # The baseline is what a first script runs: the model as loaded (fp32 on CPU, bf16 on GPU).
        runs: dict[str, list[dict]] = {"naive": [], **{d: [] for d in dtypes}}
        for _ in range(args.rounds):
            runs["naive"].append(naive(reference.model, seqs[:n_naive], v.completion_start[:n_naive], args.k,
                                       reference.device, scratch))
            for dtype, stage in stages.items():
                runs[dtype].append(ours(stage, batch)[0])
        base = runs["naive"][0]
        tok_s = {name: statistics.median(r["tok_s"] for r in rs) for name, rs in runs.items()}
        ratio = {d: statistics.median(o["tok_s"] / n["tok_s"] for o, n in zip(runs[d], runs["naive"], strict=True))
                 for d in dtypes}
        cpu_ratio = {d: statistics.median(o["cpu_tok_s"] / n["cpu_tok_s"]
                                          for o, n in zip(runs[d], runs["naive"], strict=True)) for d in dtypes}
        drift = None
        if len(dtypes) > 1:  # how far bf16 moves the cached values from the fp32 ones
            other = view(ours(stages[dtypes[1]], batch)[1], stages[dtypes[1]].meta)
            drift = float(np.abs(other.token_logprob.astype(np.float32) - v.token_logprob.astype(np.float32)).mean())
        disk = sizes(table, scratch)
        params = sum(p.numel() for p in reference.model.parameters())
        forwarded = int(sum(len(s) for s in seqs))
        roofline = None
        if gpu:
            flops = matmul_flops(reference.device)
            wall = statistics.median(r["wall_s"] for r in runs[dtypes[0]])
            roofline = {"matmul_tflops": flops / 1e12, "roofline_tok_s": flops / (2 * params),
                        "forwarded_tok_s": forwarded / wall}
            roofline["fraction"] = roofline["forwarded_tok_s"] / roofline["roofline_tok_s"]
    load_after = os.getloadavg()

    mine = runs[dtypes[0]][0]
    lines = [
        f"Workload: {rows} traces ({mine['tokens']:,} completion tokens of {forwarded:,} forwarded, max {max_tokens} "
        f"tokens/sequence), k={args.k}, preset `{preset}` ({params / 1e6:.1f}M params, vocab "
        f"{reference.meta.vocab_size:,}), device `{reference.device}`, {machine()}, torch threads "
        f"{_threads()}. Random weights (built from a config). {args.rounds} interleaved rounds, medians; the "
        f"baseline ran on {n_naive} sequences ({base['tokens']:,} tokens) per round. Load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine is shared, so absolute tokens/s "
        "move run to run; the ratio, measured within each round, is the figure to compare.",
        "",
        "| path | tokens/s (median) | per-round tokens/s | tokens per CPU-second (median) | bytes/token on disk |",
        "|---|---:|---:|---:|---:|",
        f"| naive: per-sequence forward, full-vocab log-probs saved (fp16 .npy), top-k on CPU | {tok_s['naive']:,.0f} "
        f"| {_rounds(runs['naive'])} | {_cpu(runs['naive'])} | {base['bytes_per_token']:,.0f} |",
    ]
    for dtype in dtypes:
        lines.append(f"| cache-logits {dtype}, topk-v1 (tuned writer / runner's default writer) | {tok_s[dtype]:,.0f} "
                     f"| {_rounds(runs[dtype])} | {_cpu(runs[dtype])} | {disk['topk-v1 tuned']:.1f} / {disk['topk-v1 default-writer']:.1f} |")
    lines += [
        f"| cache-logits, compact codec (tuned / default writer) | same | | | {disk['compact tuned']:.1f} / "
        f"{disk['compact default-writer']:.1f} |",
        "",
        "Speed-up over naive (median of per-round ratios): "
        + ", ".join(f"**{ratio[d]:.1f}x** ({d})" for d in dtypes)
        + "; per CPU-second (process time, less sensitive to other jobs on the machine): "
        + ", ".join(f"**{cpu_ratio[d]:.1f}x** ({d})" for d in dtypes)
        + " (goal >= 5x). Goals on disk at k=32: topk-v1 <= 120 B/token, compact <= 80 B/token (DistillKit's "
        "k=128 default: about 344).",
    ]
    if drift is not None:
        lines.append(f"bf16 vs fp32 teacher: mean |realised-token log-prob difference| {drift:.3f} nats "
                     "(the tests pin float32 when they compare against a full-softmax reference).")
    if roofline:
        lines.append(f"Roofline: bf16 matmul {roofline['matmul_tflops']:.0f} TFLOP/s -> {roofline['roofline_tok_s']:,.0f} "
                     f"forwarded tokens/s at 2 x params FLOPs/token; measured {roofline['forwarded_tok_s']:,.0f} = "
                     f"**{roofline['fraction']:.0%}** of it (goal >= 40% on an H100).")
    else:
        lines.append("GPU roofline: not measured here (no GPU in this task); on a GPU machine run "
                     "`python bench/cache_bench.py --gpu` (0.5B model from config, bf16; writes section cache-gpu).")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        title = "## Logit cache on GPU (`curate cache-logits --device cuda`)" if gpu else "## Logit cache (`curate cache-logits`)"
        write_section("cache-gpu" if gpu else "cache", title + "\n\n" + text)


def _rounds(results: list[dict]) -> str:
    return " / ".join(f"{r['tok_s']:,.0f}" for r in results)


def _cpu(results: list[dict]) -> str:
    return f"{statistics.median(r['cpu_tok_s'] for r in results):,.0f}"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
