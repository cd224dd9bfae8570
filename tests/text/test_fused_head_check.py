"""The chunked causal-LM loss is used only for models whose logits are their head applied to their hidden states:
checked on the first batch against the model's own logits, never trusted from a list of config fields."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import default_data_collator

from hf_kd import DistillationTrainer
from tests.support.data import ListDataset, clm_examples, quick_args
from tests.support.models import tiny_falcon_h1, tiny_gpt2, tiny_scaled_logits_lm


def _train(tmp_path, make_student, make_teacher, chunk):
    args = quick_args(tmp_path, per_device_train_batch_size=4, max_steps=2, clm_chunk_size=chunk, kd_alpha=0.5,
                      kd_temperature=2.0, learning_rate=0.05, max_grad_norm=0.0)
    student = make_student()
    trainer = DistillationTrainer(model=student, teacher_model=make_teacher() if make_teacher else None, args=args,
                                  train_dataset=ListDataset(clm_examples(8)), data_collator=default_data_collator)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.detach().clone() for k, v in student.state_dict().items()}, trainer


@pytest.mark.parametrize("make_student,make_teacher", [
    (tiny_falcon_h1, lambda: tiny_falcon_h1(seed=1)),  # student and teacher scale their logits by 0.25
    (tiny_gpt2, lambda: tiny_scaled_logits_lm(seed=1)),  # only the teacher post-processes
    (tiny_scaled_logits_lm, None),  # the no-KD baseline: the student's own CE
], ids=["falcon_h1", "scaled_teacher", "scaled_student"])
def test_logits_post_processed_in_forward_give_the_full_logit_loss(tmp_path, caplog, make_student, make_teacher):
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        auto, auto_weights, _ = _train(tmp_path / "auto", make_student, make_teacher, None)
    reference, ref_weights, _ = _train(tmp_path / "full", make_student, make_teacher, 0)
    assert auto == pytest.approx(reference, rel=1e-5, abs=1e-6)
    for name, w in ref_weights.items():  # the gradients, through two SGD updates
        torch.testing.assert_close(auto_weights[name], w, rtol=1e-4, atol=1e-6, msg=name)
    notes = [r.getMessage() for r in caplog.records if "full logits" in r.getMessage()]
    assert len(notes) == 1 and "post-processed in its forward" in notes[0], notes


def test_a_plain_head_keeps_the_chunked_loss(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        _, _, trainer = _train(tmp_path, tiny_gpt2, lambda: tiny_gpt2(seed=1, layers=1), None)
    assert trainer.objective._captures is not None
    assert not [r for r in caplog.records if "full logits" in r.getMessage()]
