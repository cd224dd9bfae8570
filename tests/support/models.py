"""Tiny models built from a config in code: BERT (MLM), GPT-2, Llama, Qwen2 (causal LMs); dropout-free, seeded."""

from __future__ import annotations

import torch

VOCAB = 64


def tiny_bert(vocab_size: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0, max_pos: int = 64):
    """A dropout-free BertForMaskedLM (deterministic forward), weights from ``seed``."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_pos, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=0)
    return BertForMaskedLM(cfg)


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
