"""Losses, `curate train` (KD loss falls, resume), exports loading in datasets / TRL, the CLI."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate.executors import InProcessExecutor
from curate.runner import run_stage
from curate.testing_models import build_tiny_llama
from curate.trainer.cache import CacheLogitsConfig, CacheLogitsStage
from curate.trainer.losses import kd_loss_per_token, teacher_buckets
from curate.trainer.topk_format import TokenizerMismatchError
from curate.trainer.train import Example, TrainConfig, collate, pack, student_logits_at, train


def _traces(n):
    return pa.table({
        "trace_id": [f"t{i:03d}" for i in range(n)], "problem_id": [f"p{i % 5}" for i in range(n)],
        "prompt": [f"What is {i} + {i}?" for i in range(n)],
        "reasoning": [f"First, compute the product {i}. Then check the result. " * (1 + i % 3) for i in range(n)],
        "answer": [f"The answer is \\boxed{{{2 * i}}}." for i in range(n)],
    })


@pytest.fixture(scope="module")
def setup_run(tmp_path_factory):
    """A sharp teacher (scaled LM head, so KD has something to learn), a student with the same
    tokenizer, a student with another tokenizer, the traces and their cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("train")
    base = build_tiny_llama(root / "base", seed=1)
    teacher = root / "teacher"
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(teacher)
    AutoTokenizer.from_pretrained(base).save_pretrained(teacher)
    student = build_tiny_llama(root / "student", seed=2)
    other = build_tiny_llama(root / "other", vocab=300, seed=3)
    src = root / "traces"
    src.mkdir()
    pq.write_table(_traces(24), src / "part-00000.parquet", row_group_size=8)
    cache = root / "cache"
    run_stage(CacheLogitsStage(CacheLogitsConfig(teacher=str(teacher), k=16, codec="compact")), input_dir=src,
              out_dir=cache, executor=InProcessExecutor(), progress=False)
    return {"root": root, "teacher": teacher, "student": student, "other": other, "traces": src, "cache": cache}


def test_kd_losses_are_zero_for_identical_distributions_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    lp = torch.log_softmax(logits, -1)
    top = lp.topk(8)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        same = kd_loss_per_token(logits, top.indices, top.values, kind=kind)
        assert same.abs().max() < 1e-5, kind
        other = kd_loss_per_token(torch.randn(6, 50), top.indices, top.values, kind=kind)
        assert (other > 1e-3).all(), kind
    # tail bucket: k+1 buckets summing to one, the last holding 1 - sum(top-k)
    buckets = teacher_buckets(top.values)
    assert torch.allclose(buckets.exp().sum(-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(buckets[:, -1].exp(), 1 - top.values.exp().sum(-1), atol=1e-5)
    # forward KL with the full vocabulary as "top-k" is the exact KL
    full = kd_loss_per_token(torch.zeros(6, 50), torch.arange(50).expand(6, 50), lp, tail=False)
    exact = (lp.exp() * (lp - torch.log_softmax(torch.zeros(6, 50), -1))).sum(-1)
    assert torch.allclose(full, exact, atol=1e-5)


def test_packed_rows_give_the_same_logits_as_separate_sequences(setup_run):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup_run["student"]).eval()
    rng = np.random.default_rng(0)
    batch = [Example(rng.integers(10, 300, n).astype(np.uint32), s, None, None) for n, s in ((9, 3), (14, 5), (6, 2))]
    with torch.no_grad():
        packed = student_logits_at(model, collate(batch, TrainConfig(student="x", out="y", packing=True), 0, "cpu"))
        padded = student_logits_at(model, collate(batch, TrainConfig(student="x", out="y", packing=False), 0, "cpu"))
    assert packed.shape == (6 + 9 + 4, model.config.vocab_size)
    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=1e-4)
    assert pack([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]


def test_train_lowers_kd_loss_and_resumes(setup_run):
    out = setup_run["root"] / "student-out"
    cfg = TrainConfig(student=str(setup_run["student"]), out=str(out), cache=str(setup_run["cache"]), lr=3e-3,
                      max_steps=6, token_budget=256, grad_accum=2, save_every=3, mix=0.9, seed=1)
    history = train(cfg, progress=False)
    kd = [h["kd"] for h in history]
    assert len(kd) == 6
    assert np.mean(kd[-2:]) < 0.8 * np.mean(kd[:2]) and sum(b < a for a, b in zip(kd[:-1], kd[1:], strict=True)) >= 4, kd
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000003", "checkpoint-000006"]
    assert (out / "final" / "model.safetensors").exists()
    # resume: a run from checkpoint 3 continues with exactly the same steps
    import shutil

    resumed_out = setup_run["root"] / "resumed"
    resumed_out.mkdir()
    shutil.copytree(out / "checkpoint-000003", resumed_out / "checkpoint-000003")
    resumed = train(cfg.model_copy(update={"out": str(resumed_out)}), progress=False)
    assert [h["step"] for h in resumed] == list(range(1, 7))
    np.testing.assert_allclose([h["kd"] for h in resumed[3:]], kd[3:], rtol=1e-4)
    log = [json.loads(line) for line in (resumed_out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))


def test_train_refuses_a_student_with_another_tokenizer(setup_run):
    cfg = TrainConfig(student=str(setup_run["other"]), out=str(setup_run["root"] / "bad"), cache=str(setup_run["cache"]),
                      max_steps=1)
    with pytest.raises(TokenizerMismatchError, match="made with tokenizer"):
        train(cfg, progress=False)


def test_every_export_loads_with_datasets_and_trl(setup_run, tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from curate.trainer.export import TEXT_FORMATS, TopkCollator, export, kd_loss_from_batch

    tokenizer = AutoTokenizer.from_pretrained(setup_run["teacher"])
    for fmt in TEXT_FORMATS:
        summary = export(setup_run["traces"], tmp_path / fmt, fmt, system="Think step by step.")
        ds = load_dataset("json", data_files=str(tmp_path / fmt / "train.jsonl"), split="train")
        assert len(ds) == 24 == summary["rows"], fmt
    row = load_dataset("json", data_files=str(tmp_path / "trl" / "train.jsonl"), split="train")[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][2]["reasoning_content"].startswith("First, compute the product 0.")
    assert row["messages"][2]["content"] == "The answer is \\boxed{0}."
    sharegpt = load_dataset("json", data_files=str(tmp_path / "sharegpt" / "train.jsonl"), split="train")[1]
    assert sharegpt["conversations"][1]["value"].startswith("<think>\nFirst, compute the product 1.")
    info = json.loads((tmp_path / "sharegpt" / "dataset_info.json").read_text())
    assert info["curated"]["formatting"] == "sharegpt" and info["curated"]["file_name"] == "train.jsonl"
    alpaca = json.loads((tmp_path / "alpaca" / "dataset_info.json").read_text())
    assert alpaca["curated"]["columns"]["response"] == "output"
    openai = json.loads((tmp_path / "openai" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in openai["messages"]] == ["system", "user", "assistant"]

    trl = pytest.importorskip("trl")  # TRL's own data utilities accept both conversational exports
    from trl.data_utils import apply_chat_template, is_conversational

    pc = load_dataset("json", data_files=str(tmp_path / "trl-prompt-completion" / "train.jsonl"), split="train")[0]
    assert is_conversational(pc) and is_conversational(row) and trl.__version__
    rendered = apply_chat_template(pc, tokenizer)
    assert rendered["completion"].startswith("<think>\nFirst, compute the product 0.")

    # the cache for axolotl KD (both styles) and TRL (collator + loss)
    for style in ("chat_template", "tokenized"):
        export(setup_run["traces"], tmp_path / f"kd-{style}", "axolotl-kd", cache=setup_run["cache"], kd_style=style)
        kd = load_dataset("parquet", data_files=str(tmp_path / f"kd-{style}" / "train.parquet"), split="train")
        assert len(kd) == 24
    chat = load_dataset("parquet", data_files=str(tmp_path / "kd-chat_template" / "train.parquet"), split="train")[0]
    assert chat["logprobs"][0][0]["token"].startswith("token_id:") and len(chat["logprobs"][0]) == 16
    tok = load_dataset("parquet", data_files=str(tmp_path / "kd-tokenized" / "train.parquet"), split="train")[0]
    start = tok["labels"].index(next(x for x in tok["labels"] if x != -100))
    assert tok["target_mask"][start - 1] == [0] * 16 and tok["target_mask"][start] == [1] * 16
    export(setup_run["traces"], tmp_path / "trl-kd", "trl-kd", cache=setup_run["cache"])
    ds = load_dataset("parquet", data_files=str(tmp_path / "trl-kd" / "train.parquet"), split="train")
    batch = TopkCollator(k=16, pad_id=tokenizer.pad_token_id)([ds[i] for i in range(3)])
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(setup_run["teacher"]).eval()
    student = AutoModelForCausalLM.from_pretrained(setup_run["student"]).eval()
    with torch.no_grad():
        self_loss = kd_loss_from_batch(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                       batch)
        student_loss = kd_loss_from_batch(student(input_ids=batch["input_ids"],
                                                  attention_mask=batch["attention_mask"]).logits, batch)
    assert float(self_loss) < 0.05 < float(student_loss)  # compact-codec rounding leaves a little


def test_cli_train_and_export(setup_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from curate.trainer.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--student", str(setup_run["student"]), "--cache", str(setup_run["cache"]),
                                 "--out", str(tmp_path / "s"), "--max-steps", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    result = runner.invoke(app, ["export", str(setup_run["traces"]), "--format", "alpaca", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0 and "24 rows" in result.output
    result = runner.invoke(app, ["export", str(setup_run["traces"]), "--format", "trl-kd", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "pass --cache" in result.output


def test_trl_trainers_run_on_the_exports(setup_run, tmp_path):
    """The documented KDTrainer (TRL SFTTrainer + TopkCollator + kd_loss_from_batch) takes optimizer
    steps on the trl-kd export and lowers its KD loss; SFTTrainer trains on the `trl` export."""
    pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from curate.trainer.export import TopkCollator, export, kd_loss_from_batch

    tok = AutoTokenizer.from_pretrained(setup_run["student"])
    export(setup_run["traces"], tmp_path / "trl-kd", "trl-kd", cache=setup_run["cache"])
    ds = load_dataset("parquet", data_files=str(tmp_path / "trl-kd" / "train.parquet"), split="train")
    collator = TopkCollator(k=16, pad_id=tok.pad_token_id)
    losses = []

    class KDTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            loss = kd_loss_from_batch(out.logits, inputs, mix=1.0)
            losses.append(float(loss.detach()))
            return (loss, out) if return_outputs else loss

    common = dict(max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3, report_to=[], save_strategy="no",
                  logging_steps=50, use_cpu=True, seed=0, lr_scheduler_type="constant")
    student = AutoModelForCausalLM.from_pretrained(setup_run["student"])
    KDTrainer(model=student, train_dataset=ds, data_collator=collator, processing_class=tok,
              args=SFTConfig(output_dir=str(tmp_path / "kd-out"), remove_unused_columns=False,
                             dataset_kwargs={"skip_prepare_dataset": True}, **common)).train()
    assert len(losses) == 6 and np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses

    export(setup_run["traces"], tmp_path / "trl", "trl")
    sft = load_dataset("json", data_files=str(tmp_path / "trl" / "train.jsonl"), split="train")
    result = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(setup_run["student"]), train_dataset=sft,
                        processing_class=tok, args=SFTConfig(output_dir=str(tmp_path / "sft-out"),
                                                             **{**common, "max_steps": 1})).train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
