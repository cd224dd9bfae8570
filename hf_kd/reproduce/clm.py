"""The causal-LM bits of ``hf-kd reproduce --task clm``: the student model, the collator, the regime line.

The protocol itself (teachers, variants, seeds, resumable jobs, calibration, verdicts) is the MLM one in
:mod:`hf_kd.reproduce.text`, switched by the preset's ``task``; only what differs for a GPT-style student
lives here: a GPT-2 of the preset's size (:func:`hf_kd.text.models.clm_preset_config`), next-token labels
(``DataCollatorForLanguageModeling(mlm=False)``, as ``run_scripts/run_clm_kd.py`` uses) and the unigram
entropy of the next-token targets. Quality is the trainer's ``eval_loss``: mean next-token cross-entropy over
every validation position that has a next token.
"""

from __future__ import annotations

import torch
import transformers

from ..text.models import clm_preset_config


def clm_model(p, corpus) -> transformers.PreTrainedModel:
    """A fresh causal LM of ``p.model_preset`` (GPT-2 ``tiny``... or Llama ``llama-tiny``...) for the corpus."""
    tok = corpus.tokenizer
    cfg = clm_preset_config(p.model_preset, vocab_size=len(tok), max_position_embeddings=max(512, p.max_seq_length),
                            tokenizer=tok)
    cfg.pad_token_id = tok.pad_token_id
    for k in ("bos_token_id", "eos_token_id"):  # GPT-2's default 50256 lies outside a corpus-trained vocabulary
        if getattr(cfg, k, None) is not None and getattr(cfg, k) >= len(tok):
            setattr(cfg, k, None)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def clm_collator(tokenizer) -> transformers.DataCollatorForLanguageModeling:
    """labels = input_ids (padding -100); the trainer shifts them. Deterministic, so resumed runs are exact."""
    return transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)


def next_token_unigram_entropy(val, pad_token_id: int | None) -> float:
    """Entropy (nats) of the validation next-token targets' own frequencies (every token but each row's first,
    padding excluded): the loss of the best predictor that ignores the context."""
    targets = [t for row in val["input_ids"] for t in row[1:] if t != pad_token_id]
    counts = torch.bincount(torch.tensor(targets))
    probs = counts[counts > 0].double() / counts.sum()
    return float(-(probs * probs.log()).sum())

