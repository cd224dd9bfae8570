"""Hand-made batches and small datasets for tests: pre-masked MLM rows, next-token rows, a tiny corpus."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.support.models import VOCAB


def mlm_examples(n: int = 16, seq_len: int = 12, vocab_size: int = VOCAB, seed: int = 0) -> list[dict]:
    """Pre-masked examples with *different* numbers of masked tokens and some padding per row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = seq_len - (i % 3)  # 0-2 padding positions
        ids = torch.randint(5, vocab_size, (seq_len,), generator=g)
        ids[length:] = 0
        attn = (torch.arange(seq_len) < length).long()
        labels = torch.full((seq_len,), -100)
        n_mask = 1 + (i * 7) % 5  # 1..5 masked tokens
        pos = torch.randperm(length, generator=g)[:n_mask]
        labels[pos] = ids[pos]
        ids = ids.clone()
        ids[pos] = 4  # [MASK]
        rows.append({"input_ids": ids, "attention_mask": attn, "labels": labels})
    return rows


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


def quick_args(tmp_path, **overrides):
    """DistillationTrainingArguments for a handful of deterministic CPU steps."""
    from hf_kd import DistillationTrainingArguments

    kw = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=8, learning_rate=0.5,
              optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
              report_to="none", save_strategy="no", logging_steps=1, seed=0, use_cpu=True, disable_tqdm=True,
              dataloader_num_workers=0)
    kw.update(overrides)
    return DistillationTrainingArguments(**kw)


class ListDataset(torch.utils.data.Dataset):
    """A list of ready examples (e.g. :func:`mlm_examples`) as a map-style dataset."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class ForwardCounter:
    """Forward hook that records every call of a module (teacher-call audits)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


MLM_WORDS = "the model reads text and learns to predict masked words from their context"


def write_tiny_corpus(tmp_path: Path, monkeypatch, words: str = MLM_WORDS) -> str:
    """A 120-line .jsonl corpus for reproduce tests, with ``HF_KD_CACHE`` (tokenizers, teachers) under tmp_path."""
    import json

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    ws = words.split()
    lines = [" ".join(ws[(i + j) % len(ws)] for j in range(60)) for i in range(120)]
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    return str(corpus)
