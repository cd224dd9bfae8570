"""Cost accounting: the meter's arithmetic with a fake clock, and GPU-hours continued across a resume."""

import json

import pytest
from transformers import default_data_collator

from hf_kd import CostMeter, DistillationTrainer
from tests.support.data import ListDataset, mlm_examples, quick_args
from tests.support.models import tiny_bert


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


@pytest.mark.parametrize("before,after", [(8, 4), (1, 2)])
def test_gpu_hours_keep_the_past_when_resumed_on_another_process_count(before, after):
    """10 h on `before` processes, then 1 h on `after`: 10*before + after GPU-hours (not rescaled)."""
    clock = FakeClock()
    first = CostMeter(num_processes=before, clock=clock)
    first.start()
    clock.t = 10 * 3600.0
    first.step_done()
    first.exclude()
    clock.t += 1800.0
    first.exclude()  # half an hour of evaluation
    assert first.gpu_hours == pytest.approx(10 * before)
    saved = json.loads(json.dumps(first.state_dict()))  # as written to trainer_state.json
    resumed = CostMeter(num_processes=after, clock=clock)
    resumed.load_state_dict(saved)
    assert resumed.gpu_hours == pytest.approx(10 * before)  # at once: the past is not rescaled
    resumed.start()
    clock.t += 3600.0
    resumed.step_done()
    assert resumed.gpu_hours == pytest.approx(10 * before + after)
    assert resumed.eval_gpu_hours == pytest.approx(0.5 * before)
    assert resumed.train_seconds == pytest.approx(11 * 3600.0)  # wall-clock seconds are kept too


def _resumable(tmp_path, max_steps, **kw):
    args = quick_args(tmp_path, max_steps=max_steps, per_device_train_batch_size=4, save_strategy="steps",
                      save_steps=3, learning_rate=0.01, kd_stop_steps=5, **kw)
    return DistillationTrainer(model=tiny_bert(), teacher_model=tiny_bert(seed=1, layers=1), args=args,
                               train_dataset=ListDataset(mlm_examples(24)), data_collator=default_data_collator)


def test_cost_keys_survive_restore_callback_states_from_checkpoint(tmp_path):
    """with --restore_callback_states_from_checkpoint the cost keys keep being measured."""
    _resumable(tmp_path, 3, restore_callback_states_from_checkpoint=True).train()
    second = _resumable(tmp_path, 6, restore_callback_states_from_checkpoint=True)
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    logs = [e for e in second.state.log_history if "loss" in e and e["step"] > 3]
    assert [e["step"] for e in logs] == [4, 5, 6]
    kd_lines = [e for e in logs if e["kd_weight"] > 0]  # steps 4 and 5 (indices 3, 4) are KD steps
    assert len(kd_lines) == 2
    assert all(e["teacher_time_fraction"] > 0 for e in kd_lines), kd_lines
    assert all(e["train_tokens_per_second"] > 0 for e in logs), logs
    saved = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    saved_hours = saved["stateful_callbacks"]["CostCallback"]["attributes"]["gpu_hours"]
    assert logs[0]["gpu_hours"] > saved_hours  # continued from the checkpoint, not from zero
    costs = [cb for cb in second.callback_handler.callbacks if type(cb).__name__ == "CostCallback"]
    assert costs == [second.cost_callback]  # one meter, the trainer's, first (reporters see its keys)
    assert second.callback_handler.callbacks[0] is second.cost_callback


def test_teacher_forwards_continue_across_resume(tmp_path):
    """the teacher-forward count is checkpointed; a resumed run reports the whole run's count."""
    first = _resumable(tmp_path, 3)
    first.train()
    assert first.teacher_forwards == 3
    second = _resumable(tmp_path, 6)
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert second.teacher_forwards == 5  # KD on steps 0..4, one teacher, one micro-batch per step
    saved = json.loads((tmp_path / "out" / "checkpoint-6" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["CostCallback"]["attributes"]["teacher_forwards"] == 5


def test_cuda_teacher_forwards_timed_by_events_read_at_logging(monkeypatch):
    """on CUDA the meter records events around a teacher forward and never synchronizes per
    forward; the events are read once, at logging (CUDA faked: no GPU on the test machine)."""
    import torch

    clock, reads = FakeClock(), []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock.t

        def synchronize(self):
            reads.append("sync")

        def elapsed_time(self, end):  # milliseconds, like torch.cuda.Event
            reads.append("elapsed")
            return (end.t - self.t) * 1000.0

    def no_sync(*a, **k):
        raise AssertionError("torch.cuda.synchronize() called in the teacher timing")

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    monkeypatch.setattr(CostMeter, "_on_cuda", staticmethod(lambda module: True))
    m = CostMeter(clock=clock)
    teacher = torch.nn.Linear(2, 2)
    m.watch_teachers([teacher])
    teacher.register_forward_hook(lambda *a: setattr(clock, "t", clock.t + 2.0), prepend=True)
    m.start()
    for _ in range(2):
        teacher(torch.ones(1, 2))  # 2 s each, as the events see it
    clock.t += 4.0
    m.step_done()
    assert reads == []  # nothing read during the step
    assert m.log_values()["teacher_time_fraction"] == pytest.approx(4.0 / 8.0)
    assert reads == ["sync", "elapsed", "elapsed"]  # one wait per log line
    assert m.teacher_forwards == 2
