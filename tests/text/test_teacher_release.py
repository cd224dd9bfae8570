"""After the KD stop nothing of the teachers stays alive: no module, parameter or captured activation."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import TrainerCallback, default_data_collator

from hf_kd import DistillationTrainer
from tests.support.data import ForwardCounter, ListDataset, clm_examples, mlm_examples, quick_args
from tests.support.models import tiny_bert, tiny_gpt2


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_teachers_and_their_tensors_are_freed_at_the_kd_stop(tmp_path, task):
    student, make_teacher, examples = (tiny_bert(), tiny_bert, mlm_examples) if task == "mlm" else \
        (tiny_gpt2(), tiny_gpt2, clm_examples)
    make_teacher(seed=1, layers=1).save_pretrained(tmp_path / "teacher")  # loaded by path: the trainer owns it
    args = quick_args(tmp_path / "run", max_steps=3, kd_stop_steps=1, per_device_train_batch_size=4,
                      learning_rate=0.01)
    trainer = DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=args,
                                  train_dataset=ListDataset(examples(12)), data_collator=default_data_collator)
    refs = [weakref.ref(trainer.teachers[0])] + [weakref.ref(p) for p in trainer.teachers[0].parameters()]
    trainer.train()
    gc.collect()
    assert trainer.teachers_released and trainer.teachers == []
    assert sum(r() is not None for r in refs) == 0, "teacher module or parameters still referenced"
    captures = getattr(trainer.objective, "_captures", None) or []
    assert all(c.hidden is None for c in captures)  # the student's capture keeps no activation either
    assert trainer.teacher_forwards == 1


def test_a_run_resumed_past_the_kd_stop_never_places_or_calls_a_teacher(tmp_path):
    """Resumed at step 3 with the KD stop at 2: the teacher is released before the first step, never cast to the
    teacher dtype or moved (what placing it does), never called; the trainer holds none while it trains."""
    def trainer(teacher):
        args = quick_args(tmp_path, max_steps=6, kd_stop_steps=2, per_device_train_batch_size=4, learning_rate=0.01,
                          save_strategy="steps", save_steps=3, teacher_dtype="bfloat16")
        return DistillationTrainer(model=tiny_bert(), teacher_model=teacher, args=args,
                                   train_dataset=ListDataset(mlm_examples(24)), data_collator=default_data_collator)

    trainer(tiny_bert(seed=1, layers=1)).train()
    teacher = tiny_bert(seed=1, layers=1)
    forwards = ForwardCounter(teacher)
    resumed = trainer(teacher)
    held: list[tuple[int, bool]] = []
    resumed.add_callback(type("Watch", (TrainerCallback,), {
        "on_step_begin": lambda self, *a, **k: held.append((len(resumed.teachers), resumed.teachers_released))}))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert held == [(0, True)] * 3  # steps 4-6, none with a teacher
    assert forwards.calls == 0 and resumed.teacher_forwards == 2  # the first attempt's 2, carried over; none added
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}  # placing casts it to bfloat16
