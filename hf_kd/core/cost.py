"""Cost accounting shared by the text callback and the vision loop (``docs/design.md``, "Cost accounting").

| key | meaning |
|---|---|
| ``gpu_hours`` | cumulative training GPU-seconds / 3600: each interval's wall-clock x the processes running *then* |
| ``eval_gpu_hours`` | the same for evaluation time, which ``gpu_hours`` excludes |
| ``teacher_time_fraction`` | share of training time spent in teacher forwards since the last log |
| ``train_<unit>_per_second`` | items (tokens/images) per second since the last log, all ranks |

The meter is a plain object driven by three calls -- :meth:`CostMeter.step_done` after each optimizer step,
:meth:`CostMeter.exclude` after work that is not training (evaluation), :meth:`CostMeter.log_values` when
logging -- plus forward hooks on the teachers (:meth:`CostMeter.watch_teachers`) that time and count their forwards.

GPU-seconds, not seconds, are accumulated and checkpointed: a run resumed on another number of processes
keeps its past cost as it was paid (10 h on 8 processes stay 80 GPU-hours when resumed on 4).
Teacher forwards on CUDA are timed with CUDA events read at logging time, never with a
``cuda.synchronize()`` per forward (which would stall the KD run, and only the KD run, biasing its cost).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

SECONDS_PER_HOUR = 3600.0


class CostMeter:
    """Cumulative cost accounting for one training run.

    Args:
        num_processes: devices (processes) the run occupies now; each interval adds ``seconds * num_processes``
            GPU-seconds (set it again when a resumed run has another count).
        unit: ``"tokens"`` or ``"images"``; names the throughput key ``train_<unit>_per_second``.
        train_seconds, eval_seconds: wall-clock seconds already spent (GPU-seconds = these x ``num_processes``).
        clock: injectable for tests.
    """

    def __init__(self, num_processes: int = 1, unit: str = "tokens", train_seconds: float = 0.0,
                 eval_seconds: float = 0.0, clock=time.perf_counter):
        self.num_processes = max(1, int(num_processes))
        self.unit = unit
        self.train_seconds = float(train_seconds)
        self.eval_seconds = float(eval_seconds)
        self.train_gpu_seconds = self.train_seconds * self.num_processes
        self.eval_gpu_seconds = self.eval_seconds * self.num_processes
        self.teacher_forwards = 0  # every teacher forward ever (checkpointed), counted by the hooks
        self.clock = clock
        self._mark = clock()
        self._window_seconds = 0.0
        self._window_items: int | torch.Tensor = 0  # a device tensor when fed tensors: read at logging only
        self._window_teacher_seconds = 0.0
        self._teacher_start: float | None = None
        self._cuda_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # this window's teacher forwards
        self._hooks: list = []

    # -- driving calls -------------------------------------------------------------------------------
    def start(self) -> None:
        """(Re)start the clock, e.g. at the beginning of training; time before this call is not counted."""
        self._mark = self.clock()

    def step_done(self, num_items: int | torch.Tensor = 0) -> float:
        """Count the time since the last mark as training; ``num_items`` local tokens/images of that step."""
        now = self.clock()
        dt = now - self._mark
        self._mark = now
        self.train_seconds += dt
        self.train_gpu_seconds += dt * self.num_processes
        self._window_seconds += dt
        self._window_items = self._window_items + num_items  # no host sync when num_items is a device tensor
        return dt

    def exclude(self, as_eval: bool = True) -> float:
        """Drop the time since the last mark from training time (evaluation); returns it."""
        now = self.clock()
        dt = now - self._mark
        self._mark = now
        if as_eval:
            self.eval_seconds += dt
            self.eval_gpu_seconds += dt * self.num_processes
        return dt

    # -- teacher timing ------------------------------------------------------------------------------
    def watch_teachers(self, teachers: Iterable[torch.nn.Module]) -> None:
        """Time and count every forward of ``teachers`` with forward hooks (no code in the training step)."""
        for t in teachers:
            self._hooks.append(t.register_forward_pre_hook(self._teacher_pre))
            self._hooks.append(t.register_forward_hook(self._teacher_post))

    def unwatch_teachers(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @staticmethod
    def _on_cuda(module: torch.nn.Module) -> bool:
        p = next(module.parameters(), None)
        return p is not None and p.device.type == "cuda"

    def _teacher_pre(self, module, args):
        self.teacher_forwards += 1
        if self._on_cuda(module):
            # Kernels run asynchronously: events on the stream measure the forward without stalling the host.
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._cuda_events.append((start, end))
        else:
            self._teacher_start = self.clock()

    def _teacher_post(self, module, args, output):
        if self._on_cuda(module) and self._cuda_events:
            self._cuda_events[-1][1].record()
        elif self._teacher_start is not None:
            self._window_teacher_seconds += self.clock() - self._teacher_start
            self._teacher_start = None

    def _read_cuda_events(self) -> float:
        """Seconds of this window's CUDA teacher forwards (one wait, for the last event, per log line)."""
        if not self._cuda_events:
            return 0.0
        self._cuda_events[-1][1].synchronize()
        seconds = sum(s.elapsed_time(e) for s, e in self._cuda_events) / 1000.0
        self._cuda_events = []
        return seconds

    # -- reporting -----------------------------------------------------------------------------------
    @property
    def gpu_hours(self) -> float:
        return self.train_gpu_seconds / SECONDS_PER_HOUR

    @property
    def eval_gpu_hours(self) -> float:
        return self.eval_gpu_seconds / SECONDS_PER_HOUR

    def log_values(self, reset_window: bool = True) -> dict[str, float]:
        """The cost keys for a log line; throughput and teacher share cover the window since the last call."""
        w = self._window_seconds
        self._window_teacher_seconds += self._read_cuda_events()
        items = float(self._window_items)  # the window's one host read of the item count
        values = {
            "gpu_hours": self.gpu_hours,
            "eval_gpu_hours": self.eval_gpu_hours,
            "teacher_time_fraction": (self._window_teacher_seconds / w) if w > 0 else 0.0,
            f"train_{self.unit}_per_second": (items * self.num_processes / w) if w > 0 else 0.0,
        }
        if reset_window:
            self._window_seconds = 0.0
            self._window_items = 0
            self._window_teacher_seconds = 0.0
        return values

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint must carry so that a resumed run continues the accounting."""
        return {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "train_gpu_seconds": self.train_gpu_seconds, "eval_gpu_seconds": self.eval_gpu_seconds,
                "num_processes": self.num_processes, "gpu_hours": self.gpu_hours,
                "teacher_forwards": self.teacher_forwards}

    def load_state_dict(self, state: dict) -> None:
        """Restore the accounting; GPU-seconds are taken as saved (never rescaled by today's process count)."""
        self.train_seconds = float(state["train_seconds"])
        self.eval_seconds = float(state["eval_seconds"])
        self.train_gpu_seconds = float(state["train_gpu_seconds"])
        self.eval_gpu_seconds = float(state["eval_gpu_seconds"])
        self.teacher_forwards = int(state.get("teacher_forwards", 0))


def cache_share_gpu_hours(production_device_hours: float, cached_steps: int, steps_read: int,
                          readers: int = 1) -> float:
    """A cached-KD run's share of the teacher-cache production pass (``teacher_cache_gpu_hours``).

    The pass cost ``production_device_hours`` for ``cached_steps`` steps; a run that has read ``steps_read`` of
    them is charged that fraction, divided by the ``readers`` runs the cache is amortised over (1 = charged in
    full to this run). Definitions: ``docs/design.md``, "Cost accounting".
    """
    if cached_steps <= 0:
        return 0.0
    return production_device_hours * min(steps_read, cached_steps) / cached_steps / max(1, readers)
