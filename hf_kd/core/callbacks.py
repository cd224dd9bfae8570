"""``CostCallback``: GPU-hours, teacher share and throughput for a ``transformers.Trainer`` run.

Keys it adds to every training log line (so they land in ``log_history`` and in each checkpoint's
``trainer_state.json``):

| key | meaning |
|---|---|
| ``gpu_hours`` | cumulative training GPU-seconds (wall-clock x processes at the time) / 3600; continued on resume |
| ``eval_gpu_hours`` | evaluation time x processes, in hours; excluded from ``gpu_hours`` |
| ``teacher_time_fraction`` | share of training time in teacher forwards since the last log |
| ``train_tokens_per_second`` | tokens (non-padding) per second since the last log, summed over ranks |

Evaluation lines get ``gpu_hours`` too, so quality curves pair with cost without searching.
The accounting itself is :class:`hf_kd.core.cost.CostMeter`, shared with the vision loop. Training time is
the time between consecutive optimizer-step ends (data loading included), minus evaluation.
On resume the GPU-seconds and teacher-forward count saved with the checkpoint (``stateful_callbacks``) are
restored and continued, also on another number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .cost import CostMeter


class CostCallback(TrainerCallback, ExportableState):
    """Logs the cost keys above; ``meter.add_items(n)`` is fed by the trainer with each step's tokens."""

    def __init__(self, teachers: Sequence[torch.nn.Module] = (), unit: str = "tokens"):
        self.meter = CostMeter(unit=unit)
        self.meter.watch_teachers(teachers)
        self._pending_items = 0

    def add_items(self, n: int | torch.Tensor) -> None:
        """Add a step's local tokens; a device tensor stays on the device until the next log line."""
        self._pending_items = self._pending_items + n

    # -- checkpointed state (written by Trainer._save_checkpoint into trainer_state.json) -----------------
    def state(self) -> dict:
        return {"args": {}, "attributes": self.meter.state_dict()}

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter.num_processes = max(1, args.world_size)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # several instances were saved; ours is the first
            saved = saved[0] if saved else None
        if saved:
            self.meter.load_state_dict(saved.get("attributes", {}))
        self._pending_items = 0
        self.meter.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.meter.step_done(self._pending_items)
        self._pending_items = 0

    def on_evaluate(self, args, state, control, **kwargs):
        self.meter.exclude(as_eval=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        training_line = "loss" in logs
        values = self.meter.log_values(reset_window=training_line)
        if not training_line:
            values = {"gpu_hours": values["gpu_hours"]}
        logs.update(values)
        # Trainer.log appended a copy of `logs` to log_history before calling us: update that copy too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


class PreOptimizerStepHook(TrainerCallback):
    """Calls ``fn(optimizer)`` right before every optimizer step, after gradient clipping.

    The only public point of a ``Trainer`` step where the reduced gradients are final and the update can still be
    dropped (``DistillationTrainer`` uses it for ``on_nonfinite_loss``).
    """

    def __init__(self, fn: Callable[[object], None]):
        self.fn = fn

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.fn(optimizer)


class TrainBeginHook(TrainerCallback):
    """Calls ``fn(state)`` when training begins: after a resumed run's state (its ``global_step``) is restored and
    before the first step -- the first point where a trainer knows whether a step of the run still needs a teacher.
    """

    def __init__(self, fn: Callable[[object], None]):
        self.fn = fn

    def on_train_begin(self, args, state, control, **kwargs):
        self.fn(state)
