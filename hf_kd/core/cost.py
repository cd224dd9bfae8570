"""Cost accounting shared by the text callback and the vision loop (``docs/design.md``, "Cost accounting").

| key | meaning |
|---|---|
| ``gpu_hours`` | cumulative training wall-clock x number of processes, in hours; restored on resume |
| ``eval_gpu_hours`` | the same for evaluation time, which ``gpu_hours`` excludes |
| ``teacher_time_fraction`` | share of training time spent in teacher forwards since the last log |
| ``train_<unit>_per_second`` | items (tokens/images) per second since the last log, all ranks |

The meter is a plain object driven by three calls -- :meth:`CostMeter.step_done` after each optimizer step,
:meth:`CostMeter.exclude` after work that is not training (evaluation), :meth:`CostMeter.log_values` when
logging -- plus forward hooks on the teachers (:meth:`CostMeter.watch_teachers`) that time their forwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

SECONDS_PER_HOUR = 3600.0


def _sync(device_type: str) -> None:
    # CUDA kernels run asynchronously: without a sync a forward "takes" microseconds. Synchronising costs a
    # little overlap, which is the price of an honest teacher_time_fraction.
    if device_type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


class CostMeter:
    """Cumulative wall-clock accounting for one training run.

    Args:
        num_processes: devices (processes) the run occupies; ``gpu_hours = seconds * num_processes / 3600``.
        unit: ``"tokens"`` or ``"images"``; names the throughput key ``train_<unit>_per_second``.
        train_seconds: training seconds already spent (restored from a checkpoint on resume).
        clock: injectable for tests.
    """

    def __init__(self, num_processes: int = 1, unit: str = "tokens", train_seconds: float = 0.0,
                 eval_seconds: float = 0.0, clock=time.perf_counter):
        self.num_processes = max(1, int(num_processes))
        self.unit = unit
        self.train_seconds = float(train_seconds)
        self.eval_seconds = float(eval_seconds)
        self.clock = clock
        self._mark = clock()
        self._window_seconds = 0.0
        self._window_items = 0
        self._window_teacher_seconds = 0.0
        self._teacher_start: float | None = None
        self._hooks: list = []

    # -- driving calls -------------------------------------------------------------------------------
    def start(self) -> None:
        """(Re)start the clock, e.g. at the beginning of training; time before this call is not counted."""
        self._mark = self.clock()

    def step_done(self, num_items: int = 0) -> float:
        """Count the time since the last mark as training; ``num_items`` local tokens/images of that step."""
        now = self.clock()
        dt = now - self._mark
        self._mark = now
        self.train_seconds += dt
        self._window_seconds += dt
        self._window_items += int(num_items)
        return dt

    def exclude(self, as_eval: bool = True) -> float:
        """Drop the time since the last mark from training time (evaluation); returns it."""
        now = self.clock()
        dt = now - self._mark
        self._mark = now
        if as_eval:
            self.eval_seconds += dt
        return dt

    # -- teacher timing ------------------------------------------------------------------------------
    def watch_teachers(self, teachers: Iterable[torch.nn.Module]) -> None:
        """Time every forward of ``teachers`` with forward hooks (no code in the training step)."""
        for t in teachers:
            self._hooks.append(t.register_forward_pre_hook(self._teacher_pre))
            self._hooks.append(t.register_forward_hook(self._teacher_post))

    def unwatch_teachers(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _device_type(self, module: torch.nn.Module) -> str:
        p = next(module.parameters(), None)
        return p.device.type if p is not None else "cpu"

    def _teacher_pre(self, module, args):
        _sync(self._device_type(module))
        self._teacher_start = self.clock()

    def _teacher_post(self, module, args, output):
        _sync(self._device_type(module))
        if self._teacher_start is not None:
            self._window_teacher_seconds += self.clock() - self._teacher_start
            self._teacher_start = None

    # -- reporting -----------------------------------------------------------------------------------
    @property
    def gpu_hours(self) -> float:
        return self.train_seconds * self.num_processes / SECONDS_PER_HOUR

    @property
    def eval_gpu_hours(self) -> float:
        return self.eval_seconds * self.num_processes / SECONDS_PER_HOUR

    def log_values(self, reset_window: bool = True) -> dict[str, float]:
        """The cost keys for a log line; throughput and teacher share cover the window since the last call."""
        w = self._window_seconds
        values = {
            "gpu_hours": self.gpu_hours,
            "eval_gpu_hours": self.eval_gpu_hours,
            "teacher_time_fraction": (self._window_teacher_seconds / w) if w > 0 else 0.0,
            f"train_{self.unit}_per_second": (self._window_items * self.num_processes / w) if w > 0 else 0.0,
        }
        if reset_window:
            self._window_seconds = 0.0
            self._window_items = 0
            self._window_teacher_seconds = 0.0
        return values

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint must carry so that a resumed run continues the accounting."""
        return {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "num_processes": self.num_processes, "gpu_hours": self.gpu_hours}

    def load_state_dict(self, state: dict) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
