"""Benchmark helper: a one-step teacher cache for a fixed benchmark batch, and a ``DistillationTrainer`` reading it.

The step benchmarks time ``compute_loss`` + backward + optimizer step on one batch at ``global_step`` 0; a cached
trainer there reads micro-batch 0 of step 0 each time (its micro-batch counter is rewound before each step). The
targets are the top-k of a real teacher's log-probs at the rows the student takes KD at, written by the same
``write_shard`` as ``hf-kd cache-teacher``; the producer's own timing (``teacher_positions_per_second``) is the
teacher forward + top-k + shard encoding of those rows, the work a production pass does per micro-batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hf_kd import DistillationTrainer, DistillationTrainingArguments
from hf_kd.core.cache_format import MANIFEST, Manifest, encode_shard, publish_bytes, write_shard
from hf_kd.core.losses import teacher_log_probs
from hf_kd.core.sparse_kd import topk_targets
from hf_kd.text.cache_stream import kd_rows, model_inputs

DEFAULT_K = 64


def build_cache(folder: str, task: str, teacher: torch.nn.Module, batch: dict, args: DistillationTrainingArguments,
                k: int = DEFAULT_K) -> tuple[Manifest, dict]:
    """Write a cache of step 0 / micro-batch 0 = ``batch``; returns (manifest, production measurements)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = kd_rows(batch, task, args.kd_positions)
    teacher.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = rows.take(teacher(**model_inputs(batch)).logits)
        targets = topk_targets(teacher_log_probs([logits], args.kd_temperature), k)
        data = encode_shard({(0, 0): targets}, "float16")
    seconds = time.perf_counter() - t0
    entry = write_shard(folder, 0, 0, 0, 1, {(0, 0): targets}, "float16")
    vocab = teacher.get_output_embeddings().weight.shape[0]
    m = Manifest(task=task, teacher_fingerprints=["bench"], teacher_selection=args.kd_teacher_selection,
                 tokenizer_hash="bench", data_hash="bench", seed=args.seed, data_seed=args.data_seed,
                 per_device_train_batch_size=args.per_device_train_batch_size,
                 gradient_accumulation_steps=args.gradient_accumulation_steps, world_size=1, block_size=0,
                 kd_positions=args.kd_positions, mlm_probability=None, temperature=args.kd_temperature, top_k=k,
                 vocab_size=vocab, steps=1, steps_per_shard=1, shards=[entry])
    publish_bytes(folder / MANIFEST, m.to_json().encode())
    n = len(targets)
    return m, {"kd_positions": n, "bytes_per_kd_position": len(data) / max(n, 1),
               "teacher_positions_per_second": n / seconds}


def cached_trainer(student: torch.nn.Module, args: DistillationTrainingArguments, **kw) -> DistillationTrainer:
    trainer = DistillationTrainer(model=student, args=args, **kw)
    assert not trainer.teachers and trainer.teacher_cache is not None
    return trainer


def rewind(trainer) -> None:
    """Before a benchmark step at global_step 0: the next read is micro-batch 0 again."""
    source = getattr(getattr(trainer, "objective", None), "teachers", None)
    if source is not None and hasattr(source, "_micro_batch"):
        source._step, source._micro_batch = -1, -1
