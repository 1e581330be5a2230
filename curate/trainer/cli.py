"""`curate train` and `curate export`. `cache-logits` and `divergence` are registered stages and
get their commands from the registry. Imports of torch / transformers stay inside the commands:
`curate --help` imports this module."""

from __future__ import annotations

from pathlib import Path

import typer

from curate.cli_common import console, fail


def train_cmd(
    student: str = typer.Option(..., help="Student model folder (transformers)."),
    out: Path = typer.Option(..., "--out", help="Output folder (checkpoints, train_log.jsonl, final/). Rerun to resume."),
    cache: Path | None = typer.Option(None, help="topk-v1 logit cache (a cache-logits step folder): enables KD."),
    data: Path | None = typer.Option(None, help="Traces step folder (cross-entropy only, when there is no cache)."),
    loss: str = typer.Option("forward_kl", help="forward_kl, reverse_kl or jsd."),
    beta: float = typer.Option(0.5, help="JSD: weight of the teacher in the mixture."),
    temperature: float = typer.Option(1.0, help="Distillation temperature (KD term scaled by T^2)."),
    mix: float = typer.Option(1.0, help="Weight of KD; 1 - mix goes to cross-entropy."),
    tail: bool = typer.Option(True, "--tail/--no-tail", help="Tail bucket for the mass outside the top-k."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (AdamW, cosine decay)."),
    warmup_steps: int = typer.Option(0, help="Linear warm-up steps."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps [default: all epochs]."),
    epochs: int = typer.Option(1, help="Passes over the data."),
    token_budget: int = typer.Option(8192, help="Tokens per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    packing: bool = typer.Option(True, "--packing/--no-packing", help="Pack sequences into rows (no padding)."),
    save_every: int = typer.Option(200, help="Optimizer steps between checkpoints."),
    seed: int = typer.Option(0, help="Data order and init seed."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU), bfloat16, float16, float32."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    from pydantic import ValidationError

    from curate.trainer.topk_format import CacheFormatError
    from curate.trainer.train import TrainConfig, train

    if cache is None and data is None:
        fail("pass --cache (knowledge distillation) or --data (cross-entropy only)")
    try:
        cfg = TrainConfig(student=student, out=str(out), cache=str(cache) if cache else None,
                          data=str(data) if data else None, loss=loss, beta=beta, temperature=temperature, mix=mix,
                          tail=tail, lr=lr, warmup_steps=warmup_steps, max_steps=max_steps, epochs=epochs,
                          token_budget=token_budget, grad_accum=grad_accum, packing=packing, save_every=save_every,
                          seed=seed, device=device, dtype=dtype)
    except ValidationError as exc:
        fail("invalid options:\n  " + "\n  ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors()))
    try:
        history = train(cfg, progress=progress)
    except (CacheFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if history:
        first, last = history[0], history[-1]
        console.print(f"trained {last['step']} steps: loss {first['loss']:.4f} -> {last['loss']:.4f} "
                      f"(kd {first['kd']:.4f} -> {last['kd']:.4f}); model in {out / 'final'}")


def export_cmd(
    source: Path = typer.Argument(..., help="Run directory (its latest select step) or a traces step folder."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    fmt: str = typer.Option("trl", "--format", help="trl, trl-prompt-completion, sharegpt, alpaca, axolotl, openai, "
                            "axolotl-kd, trl-kd."),
    cache: Path | None = typer.Option(None, help="Logit cache (for axolotl-kd and trl-kd)."),
    system: str | None = typer.Option(None, help="System message added to every conversation."),
    name: str = typer.Option("curated", help="Dataset name in LLaMA-Factory's dataset_info.json."),
    kd_style: str = typer.Option("chat_template", help="axolotl-kd: chat_template (messages + logprobs) or "
                                 "tokenized (input_ids + target_* columns)."),
) -> None:
    from curate.trainer.export import FORMATS, export
    from curate.trainer.topk_format import CacheFormatError

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if kd_style not in ("chat_template", "tokenized"):
        fail("--kd-style must be chat_template or tokenized")
    try:
        summary = export(source, out, fmt, cache=cache, system=system, name=name, kd_style=kd_style)
    except (CacheFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"{summary['format']}: {summary['rows']:,} rows -> {', '.join(summary['files'])}")


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        help="Train a student on the curated set: KD on the teacher's cached top-k (forward/reverse KL, JSD) mixed "
        "with cross-entropy; packing, gradient accumulation, checkpoints; rerun to resume.\n\n\b\nExample:\n"
        "  curate train --student /models/Qwen2.5-0.5B --cache runs/demo/06-cache_logits --out runs/demo/student",
    )(train_cmd)
    app.command(
        "export",
        help="Export the curated set for TRL, LLaMA-Factory, axolotl or OpenAI fine-tuning, and the logit cache for "
        "axolotl KD or TRL.\n\n\b\nExample:\n  curate export runs/demo --format sharegpt --out exports/sharegpt\n"
        "  curate export runs/demo --format axolotl-kd --cache runs/demo/06-cache_logits --out exports/kd",
    )(export_cmd)
