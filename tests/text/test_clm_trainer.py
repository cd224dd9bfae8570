"""DistillationTrainer on causal LMs equals a hand computation of the objective; other models are refused."""

import pytest
import torch
from transformers import BertForSequenceClassification, default_data_collator

from hf_kd import DistillationTrainer
from tests.support.data import ListDataset, clm_examples, quick_args
from tests.support.models import tiny_bert, tiny_gpt2, tiny_llama, tiny_qwen2

LR = 0.5


def _hand_loss(student, teachers, rows, alpha, T, divergence="forward_kl", kd_all=False):
    """The objective written out from full logits: next-token CE + T^2 KL(teacher-mean || student), sums / counts."""
    ids, attn, labels = (torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels"))
    s = student(input_ids=ids, attention_mask=attn).logits[:, :-1]
    target, real = labels[:, 1:], attn[:, 1:] == 1
    labelled = real & (target != -100)
    s_logp = s.float().log_softmax(-1)
    ce = -s_logp[labelled].gather(-1, target[labelled][:, None]).sum() / labelled.sum()
    if not teachers:
        return ce
    kd_rows = real if kd_all else labelled
    with torch.no_grad():
        q = torch.stack([(t(input_ids=ids, attention_mask=attn).logits[:, :-1][kd_rows] / T).softmax(-1)
                         for t in teachers]).mean(0)
    p_log = (s[kd_rows] / T).log_softmax(-1)
    if divergence == "forward_kl":
        kl = (q * (q.log() - p_log)).sum()
    else:
        kl = (p_log.exp() * (p_log - q.log())).sum()
    return (1 - alpha) * ce + alpha * T * T * kl / kd_rows.sum()


def _hand_steps(student, teachers, rows, kd_steps, total_steps, **kw):
    for step in range(total_steps):
        student.zero_grad()
        _hand_loss(student, teachers if step < kd_steps else [], rows, **kw).backward()
        with torch.no_grad():
            for p in student.parameters():
                p -= LR * p.grad
    return {k: v.detach().clone() for k, v in student.named_parameters()}


def _train(tmp_path, make_student, teachers, batch, ga, max_steps=1, stop=None, **kw):
    student = make_student()
    kw.setdefault("learning_rate", LR)
    args = quick_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=ga, max_steps=max_steps,
                      kd_stop_steps=stop, **kw)
    trainer = DistillationTrainer(model=student, teacher_model=teachers, args=args,
                                  train_dataset=ListDataset(clm_examples(8)), data_collator=default_data_collator)
    trainer.train()
    return {k: v.detach().clone() for k, v in student.named_parameters()}, trainer


def _assert_same(a, b, atol=2e-6):
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"max parameter difference {worst}"


CASES = {  # name: (student, teachers, divergence, chunk size, kd_positions)
    "gpt2-llama-fwd-chunked": (tiny_gpt2, lambda: [tiny_llama(seed=1)], "forward_kl", None, "masked"),
    "gpt2-ensemble-rev-chunk3": (tiny_gpt2, lambda: [tiny_llama(seed=1), tiny_gpt2(seed=2, layers=1)], "reverse_kl", 3,
                                 "masked"),
    "llama-ensemble-fwd-full-logits": (tiny_llama, lambda: [tiny_gpt2(seed=1), tiny_qwen2(seed=2)], "forward_kl", 0,
                                       "masked"),
    "qwen2-gpt2-all-positions": (tiny_qwen2, lambda: [tiny_gpt2(seed=1)], "forward_kl", 5, "all"),
    "gpt2-baseline": (tiny_gpt2, lambda: [], "forward_kl", None, "masked"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ga", [1, 4])
def test_clm_kd_step_equals_hand_computation(tmp_path, case, ga):
    make_student, make_teachers, divergence, chunk, positions = CASES[case]
    ours, _ = _train(tmp_path, make_student, make_teachers() or None, 8 // ga, ga, kd_alpha=0.3, kd_temperature=2.0,
                     kd_divergence=divergence, clm_chunk_size=chunk, kd_positions=positions)
    hand = _hand_steps(make_student(), make_teachers(), clm_examples(8), 1, 1, alpha=0.3, T=2.0,
                       divergence=divergence, kd_all=positions == "all")
    base = {k: v for k, v in make_student().named_parameters()}
    assert max((hand[k] - base[k]).abs().max().item() for k in hand) > 1e-3  # the step did move the weights
    _assert_same(ours, hand)


def test_cutoff_then_plain_ce(tmp_path):
    ours, trainer = _train(tmp_path, tiny_gpt2, [tiny_llama(seed=1)], 8, 1, max_steps=3, stop=1, kd_alpha=0.5,
                           kd_temperature=3.0)
    hand = _hand_steps(tiny_gpt2(), [tiny_llama(seed=1)], clm_examples(8), 1, 3, alpha=0.5, T=3.0)
    _assert_same(ours, hand, atol=5e-6)
    lines = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["kd_weight"] for e in lines] == [0.5, 0.0, 0.0]
    assert "kd_loss" in lines[0] and "kd_loss" not in lines[1] and all("clm_loss" in e for e in lines)
    assert trainer.teachers_released and sorted({s for s, _ in trainer.teacher_calls}) == [0]


def test_sample_selection_calls_one_teacher_per_step(tmp_path):
    teachers = [tiny_gpt2(seed=s, layers=1) for s in (1, 2, 3)]
    _, trainer = _train(tmp_path, tiny_gpt2, teachers, 2, 2, max_steps=4, kd_teacher_selection="sample")
    by_step = {}
    for step, idx in trainer.teacher_calls:
        by_step.setdefault(step, set()).add(idx)
    assert sorted(by_step) == [0, 1, 2, 3] and all(len(v) == 1 for v in by_step.values())


def test_eval_loss_is_the_models_own_next_token_loss(tmp_path):
    student = tiny_gpt2()
    rows = clm_examples(4, prompt_masked=False)
    trainer = DistillationTrainer(model=student, teacher_model=tiny_gpt2(seed=1), args=quick_args(tmp_path),
                                  eval_dataset=ListDataset(rows), data_collator=default_data_collator)
    ids, attn, labels = (torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        expected = student(input_ids=ids, attention_mask=attn, labels=labels).loss
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_model_without_a_loss_is_refused(tmp_path):
    from transformers import BertConfig

    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="no loss for BertForSequenceClassification: it supports masked LMs"):
        DistillationTrainer(model=model, args=quick_args(tmp_path), train_dataset=ListDataset(clm_examples(4)))
    with pytest.raises(ValueError, match="got model=None"):
        DistillationTrainer(model=None, args=quick_args(tmp_path), train_dataset=ListDataset(clm_examples(4)))


def test_teacher_of_another_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a MLM model but the student is trained as CLM"):
        DistillationTrainer(model=tiny_gpt2(), teacher_model=tiny_bert(), args=quick_args(tmp_path),
                            train_dataset=ListDataset(clm_examples(4)))


def test_teacher_with_another_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def tok(words):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
            {w: i for i, w in enumerate(words)}, unk_token="<unk>")), unk_token="<unk>")

    teacher = tiny_gpt2(seed=1)
    teacher.save_pretrained(tmp_path / "t")
    DistillationTrainer(model=tiny_gpt2(), teacher_model=str(tmp_path / "t"), args=quick_args(tmp_path / "none"),
                        processing_class=tok(["<unk>", "b", "a"]))  # teacher saved without a tokenizer: no check
    tok(["<unk>", "a", "b"]).save_pretrained(tmp_path / "t")
    DistillationTrainer(model=tiny_gpt2(), teacher_model=str(tmp_path / "t"), args=quick_args(tmp_path / "ok"),
                        processing_class=tok(["<unk>", "a", "b"]))  # same vocabulary: accepted
    with pytest.raises(ValueError, match="another vocabulary than the student"):
        DistillationTrainer(model=tiny_gpt2(), teacher_model=str(tmp_path / "t"), args=quick_args(tmp_path / "x"),
                            processing_class=tok(["<unk>", "b", "a"]))


def test_bf16_autocast_chunked_matches_full_logits(tmp_path):
    """Under bf16 autocast (teacher in bf16) the chunked loss follows the full-logits path step by step."""
    losses = {}
    for chunk in (None, 0):
        _, trainer = _train(tmp_path / str(chunk), tiny_gpt2, [tiny_llama(seed=1)], 4, 1, max_steps=2, bf16=True,
                            clm_chunk_size=chunk, kd_alpha=0.5, learning_rate=0.01)
        assert next(trainer.teachers[0].parameters()).dtype == torch.bfloat16
        losses[chunk] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[None] == pytest.approx(losses[0], rel=1e-4)


def test_training_step_never_materialises_full_logits_by_default(tmp_path):
    """The chunked path is the trainer's default: the LM heads of student and teacher see no positions in a
    training step (the loss takes their hidden states); clm_chunk_size=0 is the full-logits path."""
    seen = {}
    for chunk in (None, 0):
        student, teacher = tiny_gpt2(), tiny_llama(seed=1)
        shapes = seen[chunk] = []
        for m in (student, teacher):
            m.get_output_embeddings().register_forward_hook(lambda mod, a, out, shapes=shapes: shapes.append(tuple(out.shape)))
        args = quick_args(tmp_path / str(chunk), per_device_train_batch_size=4, max_steps=1, clm_chunk_size=chunk,
                          learning_rate=0.01)
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ListDataset(clm_examples(4)),
                            data_collator=default_data_collator).train()
    # [B, 0, V]: no logits in the step; once per model, one sequence checks that its logits are head(hidden)
    assert [s for s in seen[None] if s[0] == 4] == [(4, 0, 64)] * 2, seen[None]
    assert [s for s in seen[None] if s[0] != 4] == [(1, 10, 64)] * 2, seen[None]
    assert len(seen[0]) == 2 and all(s[:2] == (4, 10) for s in seen[0]), seen[0]
