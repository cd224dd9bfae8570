"""what the training step costs on the host -- no sync per micro-batch, no useless teacher work."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import default_data_collator

from hf_kd import DistillationTrainer
from tests.support.data import ForwardCounter, ListDataset, mlm_examples, quick_args
from tests.support.models import tiny_bert

# Every way a tensor's value reaches the host (a device sync on CUDA).
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
# Reads inside a model's forward are the model's (transformers' SDPA mask check `padding_mask.all()`, once per
# forward): a plain Trainer pays them too, and they are not the trainer's to remove.
MODEL_CODE = ("transformers/masking_utils.py", "transformers/models/")


def _count_host_reads(monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(HOST_READS, 0)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **kw):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if not any(part in caller for part in MODEL_CODE):
                counts[_name] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def _host_reads_during_training(tmp_path, monkeypatch, ga: int) -> dict[str, int]:
    args = quick_args(tmp_path, max_steps=2, per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga,
                      logging_steps=1000, learning_rate=0.01)
    trainer = DistillationTrainer(model=tiny_bert(), teacher_model=tiny_bert(seed=1, layers=1), args=args,
                                  train_dataset=ListDataset(mlm_examples(16)), data_collator=default_data_collator)
    with monkeypatch.context() as m:
        counts = _count_host_reads(m)
        trainer.train()
    return counts


def test_no_host_sync_per_micro_batch(tmp_path, monkeypatch):
    """the same optimizer steps split into 4x the micro-batches read no more values on the host."""
    one = _host_reads_during_training(tmp_path / "ga1", monkeypatch, 1)
    four = _host_reads_during_training(tmp_path / "ga4", monkeypatch, 4)
    assert four == one, f"host reads grow with the micro-batches: GA 1 {one}, GA 4 {four}"
    # and per optimizer step they are few: the non-finite guard's one read, plus the end-of-training log line
    assert sum(one.values()) <= 2 * 2 + 6, one


def test_kd_alpha_zero_runs_no_teacher_forward(tmp_path):
    """kd_alpha=0 gives the KD term no weight, so no teacher forward may run."""
    teacher = tiny_bert(seed=1, layers=1)
    counter = ForwardCounter(teacher)
    args = quick_args(tmp_path, max_steps=3, per_device_train_batch_size=4, kd_alpha=0.0, learning_rate=0.01)
    trainer = DistillationTrainer(model=tiny_bert(), teacher_model=teacher, args=args,
                                  train_dataset=ListDataset(mlm_examples(12)), data_collator=default_data_collator)
    trainer.train()
    assert counter.calls == 0 and trainer.teacher_forwards == 0
    lines = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["kd_weight"] == 0.0 and "kd_loss" not in e for e in lines)
    assert all(e["loss"] == pytest.approx(e["mlm_loss"], rel=1e-4) for e in lines)


def test_teacher_calls_are_bounded_but_counted(tmp_path, monkeypatch):
    """the audit list keeps a bounded recent window; the count covers every forward."""
    import hf_kd.text.teacher_targets as targets_module

    monkeypatch.setattr(targets_module, "TEACHER_CALLS_KEPT", 3)
    args = quick_args(tmp_path, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                      learning_rate=0.01)
    trainer = DistillationTrainer(model=tiny_bert(), teacher_model=tiny_bert(seed=1, layers=1), args=args,
                                  train_dataset=ListDataset(mlm_examples(24)), data_collator=default_data_collator)
    trainer.train()
    assert trainer.teacher_forwards == 12  # 6 KD steps x 2 micro-batches
    assert trainer.teacher_calls == [(4, 0), (5, 0), (5, 0)]


def test_nonfinite_guard_reuses_the_trainers_gradient_norm(tmp_path, monkeypatch):
    """the guard takes no second pass over the gradients (torch._foreach_norm) per step."""
    calls = []
    original = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = quick_args(tmp_path, max_steps=3, per_device_train_batch_size=4, learning_rate=0.01, max_grad_norm=0.0)
    trainer = DistillationTrainer(model=tiny_bert(), args=args, train_dataset=ListDataset(mlm_examples(12)),
                                  data_collator=default_data_collator)
    norms = []
    get = trainer._get_grad_norm
    monkeypatch.setattr(trainer, "_get_grad_norm", lambda *a, **k: norms.append(1) or get(*a, **k))
    trainer.train()
    assert len(norms) == 3  # the Trainer's own norm, once per step (computed even without clipping)
    assert len(calls) <= len(norms), f"{len(calls)} gradient-norm passes for {len(norms)} steps"


class _DeviceSyncs:
    """Counts the aten ops that make the host wait for the device (the host reads a value, or a row count: a
    boolean-mask selection, in forward as ``index`` or in backward as ``index_put``), outside model code.
    Seen at the dispatcher, so C++-side syncs that no Python method of ``torch.Tensor`` shows are counted too."""

    READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                masked = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
                if (name in counter.READS or masked) and not counter._in_model_code():
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.count, self.mode = 0, Mode()

    @staticmethod
    def _in_model_code() -> bool:
        frame = sys._getframe(2)
        while frame is not None and "/torch/" in frame.f_code.co_filename.replace("\\", "/"):
            frame = frame.f_back
        name = frame.f_code.co_filename.replace("\\", "/") if frame is not None else ""
        return any(part in name for part in MODEL_CODE)


def _device_syncs_during_training(tmp_path, task: str, ga: int) -> int:
    from tests.support.data import clm_examples
    from tests.support.models import tiny_gpt2, tiny_llama

    args = quick_args(tmp_path, max_steps=2, per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga,
                      logging_steps=1000, learning_rate=0.01)
    student, teacher, data = ((tiny_bert(), tiny_bert(seed=1, layers=1), mlm_examples(16)) if task == "mlm" else
                              (tiny_gpt2(), tiny_llama(seed=1), clm_examples(16)))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ListDataset(data),
                                  data_collator=default_data_collator)
    syncs = _DeviceSyncs()
    with syncs.mode:
        trainer.train()
    return syncs.count


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_at_most_one_device_sync_per_micro_batch(tmp_path, task):
    """A KD micro-batch selects its loss rows (student head, teacher head, labels) with one shared row count --
    the one sync a data-dependent number of rows needs -- and no boolean-mask selection in forward or backward."""
    one = _device_syncs_during_training(tmp_path / "ga1", task, 1)
    four = _device_syncs_during_training(tmp_path / "ga4", task, 4)
    extra_micro_batches = 2 * 4 - 2 * 1
    assert four - one <= extra_micro_batches, f"{(four - one) / extra_micro_batches:.1f} syncs per micro-batch"
