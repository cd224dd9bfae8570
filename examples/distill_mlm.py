"""Distil a small BERT during MLM pretraining with hf-kd, end to end, offline, in under a minute on a CPU.

    python examples/distill_mlm.py                 # teacher 60 steps, student 30
    python examples/distill_mlm.py --steps 5       # a quicker look

1. data: the built-in corpus (Python's own standard-library documentation: no download), a WordPiece
   tokenizer trained on it (cached under $HF_KD_CACHE), texts cut into 64-token sequences;
2. a teacher: a tiny BERT trained briefly with plain MLM (``DistillationTrainer`` without a teacher is the
   no-KD baseline, through the same loss path);
3. a student distilling from it for the first half of its steps (``kd_stop_ratio=0.5``), then plain MLM;
4. both evaluated on the same held-out sequences, masked identically.

Masks come from ``ResumableMLMCollator`` (a pure function of seed and batch), not the stock
``DataCollatorForLanguageModeling``, so a run resumed from a checkpoint is bit-identical to an uninterrupted
one. The numbers this prints are a smoke test of the API, not evidence: see docs/design.md and
``hf-kd reproduce`` for the measured protocol.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch
from transformers import BertForMaskedLM

from hf_kd import DistillationTrainer, DistillationTrainingArguments
from hf_kd.text.corpus import builtin_splits
from hf_kd.text.data import ResumableMLMCollator, tokenize_and_chunk, train_wordpiece_tokenizer
from hf_kd.text.models import preset_config

SEQ_LEN = 64


def load_data(max_train: int, max_eval: int):
    """Tokenizer and (train, validation) 64-token sequences from the built-in corpus."""
    train_docs, val_docs = builtin_splits()
    tokenizer = train_wordpiece_tokenizer(train_docs, vocab_size=2048)  # trained once, then cached
    train_docs = train_docs[: max(50, max_train // 4)]  # a document gives ~5 sequences: tokenize only what is used

    def sequences(docs, n, what):
        ds = tokenize_and_chunk(datasets.Dataset.from_dict({"text": docs}), tokenizer, "text", SEQ_LEN, what=what)
        return ds.select(range(min(n, len(ds))))

    return tokenizer, sequences(train_docs, max_train, "training data"), sequences(val_docs, max_eval, "validation")


def tiny_bert(tokenizer, layers: int, hidden: int, seed: int) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = preset_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=SEQ_LEN,
                           num_hidden_layers=layers, hidden_size=hidden, intermediate_size=4 * hidden,
                           pad_token_id=tokenizer.pad_token_id)
    return BertForMaskedLM(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30,
                        help="the student's optimizer steps (the teacher trains twice as many)")
    parser.add_argument("--output_dir", default="runs/example", help="where the two runs are written")
    a = parser.parse_args(argv)
    out = Path(a.output_dir)
    tokenizer, train, val = load_data(max_train=16 * 2 * a.steps, max_eval=128)
    collator = ResumableMLMCollator(tokenizer, mlm_probability=0.15, seed=0)
    common = dict(max_steps=a.steps, per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=2e-3,
                  warmup_steps=0.06, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=a.steps,
                  use_cpu=True, overwrite_output_dir=True)

    # The teacher: plain MLM for twice the student's steps (no teacher_model = the no-KD baseline path).
    teacher = tiny_bert(tokenizer, layers=2, hidden=96, seed=0)
    teacher_args = DistillationTrainingArguments(output_dir=str(out / "teacher"),
                                                 **{**common, "max_steps": 2 * a.steps})
    DistillationTrainer(model=teacher, args=teacher_args, train_dataset=train, data_collator=collator).train()

    # The student, as the README shows it: KD for the first half of its steps, then plain MLM.
    student = tiny_bert(tokenizer, layers=1, hidden=64, seed=1)
    args = DistillationTrainingArguments(
        output_dir=str(out / "kd"), **common,  # max_steps, batch size, learning rate, ...
        kd_alpha=0.5, kd_temperature=1.0,    # loss = (1-a)·MLM + a·T²·KL(teacher‖student)
        kd_stop_ratio=0.5,                   # KD for the first half, then plain MLM, teacher freed
        kd_positions="masked")               # KD where labels != -100; "all" = every non-padding token
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,  # or a path, or a list
                                  train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                                  data_collator=ResumableMLMCollator(tokenizer, seed=0))  # exact resume
    trainer.train()
    student_eval = trainer.evaluate()

    # The teacher on the same held-out sequences (same masks: the collator is a function of seed and batch).
    teacher_eval = DistillationTrainer(model=teacher, args=teacher_args, eval_dataset=val,
                                       data_collator=collator).evaluate()
    summary = {"teacher_eval_loss": teacher_eval["eval_loss"], "student_eval_loss": student_eval["eval_loss"],
               "kd_stop_step": trainer.kd_stop_step, "teacher_forwards": len(trainer.teacher_calls),
               "student_gpu_hours": trainer.cost_callback.meter.gpu_hours}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
