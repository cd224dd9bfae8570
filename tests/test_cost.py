"""Cost accounting: the meter's arithmetic with a fake clock, and GPU-hours continued across a resume."""

import json

import pytest
from transformers import default_data_collator

from hf_kd import CostMeter, DistillationTrainer
from tests.conftest import ListDataset, mlm_examples, quick_args, tiny_bert


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_meter_counts_training_excludes_eval_and_scales_by_processes():
    clock = FakeClock()
    m = CostMeter(num_processes=4, unit="tokens", clock=clock)
    m.start()
    clock.t = 10.0
    m.step_done(num_items=1000)  # 10 s of training
    clock.t = 16.0
    m.exclude()  # 6 s of evaluation
    clock.t = 26.0
    m.step_done(num_items=1000)
    vals = m.log_values()
    assert vals["gpu_hours"] == pytest.approx(20.0 * 4 / 3600)
    assert vals["eval_gpu_hours"] == pytest.approx(6.0 * 4 / 3600)
    assert vals["train_tokens_per_second"] == pytest.approx(2000 * 4 / 20.0)
    assert m.log_values()["train_tokens_per_second"] == 0.0  # the window was reset


def test_meter_times_teacher_forwards_with_hooks():
    import torch

    clock = FakeClock()
    m = CostMeter(clock=clock)
    teacher = torch.nn.Linear(2, 2)
    m.watch_teachers([teacher])

    def slow_forward(module, args, output):
        clock.t += 3.0  # the forward "takes" 3 s (runs between the meter's pre and post hooks)

    teacher.register_forward_hook(slow_forward, prepend=True)
    m.start()
    teacher(torch.ones(1, 2))
    clock.t += 1.0
    m.step_done()
    assert m.log_values()["teacher_time_fraction"] == pytest.approx(3.0 / 4.0)


def test_state_round_trip():
    m = CostMeter(train_seconds=7.0, eval_seconds=2.0)
    m2 = CostMeter()
    m2.load_state_dict(m.state_dict())
    assert (m2.train_seconds, m2.eval_seconds) == (7.0, 2.0)



def test_gpu_hours_continue_after_resume(tmp_path):
    def trainer(max_steps):
        args = quick_args(tmp_path, max_steps=max_steps, per_device_train_batch_size=4, save_strategy="steps",
                          save_steps=3, learning_rate=0.01)
        return DistillationTrainer(model=tiny_bert(), teacher_model=tiny_bert(seed=1, layers=1), args=args,
                                   train_dataset=ListDataset(mlm_examples(24)), data_collator=default_data_collator)

    first = trainer(3)
    first.train()
    saved = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    saved_seconds = saved["stateful_callbacks"]["CostCallback"]["attributes"]["train_seconds"]
    assert saved_seconds > 0
    second = trainer(6)
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    logs = [e for e in second.state.log_history if "loss" in e and e["step"] > 3]
    assert logs and logs[0]["gpu_hours"] > saved_seconds / 3600  # continued, not reset
    total = second.cost_callback.meter.train_seconds
    assert total > saved_seconds
    assert total - saved_seconds < 60  # only this attempt's work was added
