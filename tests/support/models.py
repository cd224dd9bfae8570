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


def tiny_falcon_h1(vocab_size: int = VOCAB, hidden: int = 32, seed: int = 0, lm_head_multiplier: float = 0.25):
    """A FalconH1ForCausalLM (attention + Mamba-2 mixer): its ``forward`` multiplies the logits by
    ``lm_head_multiplier``, a post-processing no config allow-list of the trainer names."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    torch.manual_seed(seed)
    cfg = FalconH1Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, mamba_d_ssm=hidden,
                         mamba_n_heads=2, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4,
                         mamba_expand=2, mamba_chunk_size=8, lm_head_multiplier=lm_head_multiplier,
                         max_position_embeddings=64, pad_token_id=0)
    return FalconH1ForCausalLM(cfg)


def tiny_scaled_logits_lm(scale: float = 0.5, seed: int = 0):
    """A GPT-2 causal LM whose ``forward`` scales its logits (no config field says so)."""
    from transformers import GPT2LMHeadModel

    class ScaledLogitsForCausalLM(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
            out.logits = out.logits * scale
            return out

    base = tiny_gpt2(seed=seed)
    model = ScaledLogitsForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    return model
