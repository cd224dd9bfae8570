"""Shared tiny fixtures: models built from a config in code, hand-made MLM batches, quick TrainingArguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One thread: on a shared 2-core machine two OpenMP threads per test process oversubscribe the cores and
# tiny models run ~30x slower (measured); the tests measure correctness, not throughput.
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_bert(vocab_size: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0, max_pos: int = 64):
    """A dropout-free BertForMaskedLM (deterministic forward), weights from ``seed``."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_pos, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=0)
    return BertForMaskedLM(cfg)


def mlm_examples(n: int = 16, seq_len: int = 12, vocab_size: int = 64, seed: int = 0) -> list[dict]:
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


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide singletons after a test that built an ``Accelerator``."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
