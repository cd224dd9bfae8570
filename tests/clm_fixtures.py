"""Tiny causal LMs built from a config in code (GPT-2, Llama, Qwen2) and hand-made next-token batches."""

from __future__ import annotations

import torch

VOCAB = 64


def tiny_gpt2(vocab_size: int = VOCAB, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A dropout-free GPT2LMHeadModel (tied head), weights from ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=2, n_positions=64, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def tiny_llama(vocab_size: int = VOCAB, hidden: int = 48, layers: int = 1, seed: int = 0):
    """A LlamaForCausalLM (untied head): another family and a larger hidden size than :func:`tiny_gpt2`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def tiny_qwen2(vocab_size: int = VOCAB, hidden: int = 32, layers: int = 1, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    return Qwen2ForCausalLM(cfg)


def clm_examples(n: int = 8, seq_len: int = 10, vocab_size: int = VOCAB, seed: int = 0,
                 prompt_masked: bool = True) -> list[dict]:
    """Right-padded examples (0-2 pads, labels -100 there), and with ``prompt_masked`` a -100 "prompt" of 0-2
    tokens, so rows carry different numbers of next-token positions (completion-only style)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = seq_len - (i % 3)
        ids = torch.randint(5, vocab_size, (seq_len,), generator=g)
        ids[length:] = 0
        attn = (torch.arange(seq_len) < length).long()
        labels = ids.clone()
        labels[length:] = -100
        if prompt_masked:
            labels[: (i * 5) % 3] = -100
        rows.append({"input_ids": ids, "attention_mask": attn, "labels": labels})
    return rows
