"""What a vision run shows while it trains: a rank-0 progress bar and a log line every ``--logging_steps``.

Losses are summed on the device step by step (:class:`hf_kd.core.log_terms.TermWindow`, as for text) and read -- one reduce and one host sync --
only when a line is logged or an evaluation runs, so the training step itself never waits for the host. The
window's keys mean what they mean for text (:func:`hf_kd.core.log_terms.window_terms`): ``task_loss`` over the
window's steps, ``kd_loss`` over its KD steps only, ``kd_weight`` = ``kd_alpha`` x KD steps / steps.
"""

from __future__ import annotations

import contextlib
import math

from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..core.log_terms import TermWindow

logger = get_logger(__name__)  # main process only

# The keys of a training log line, in the order they are printed.
LOG_KEYS = ("loss", "task_loss", "kd_loss", "kd_weight", "learning_rate", "train_images_per_second", "gpu_hours",
            "teacher_time_fraction")


def window_values(window: TermWindow, accelerator: Accelerator, kd_alpha: float = 0.0) -> dict:
    """The window's means (``None`` when it saw no step / no KD step); starts a new window.

    ``kd_alpha``: the run's KD weight (0 without teachers), for ``kd_weight``. The step's terms are already
    global means (normalised by the global image count), so the ranks' sums add up to them."""
    if window.empty:
        return {"loss": None, "task_loss": None, "kd_loss": None, "kd_weight": None}
    terms = window.read(kd_alpha, accelerator.device, accelerator.num_processes, tokens_averaged_across_devices=True,
                        reduce_sum=lambda t: accelerator.reduce(t, reduction="sum"))
    return {"loss": terms["loss"], "task_loss": terms["task_loss"], "kd_loss": terms.get("kd_loss"),
            "kd_weight": terms["kd_weight"]}


def loss_window() -> TermWindow:
    """A window of a vision run's logged terms: objective, task loss and KD loss."""
    return TermWindow("task_loss", with_loss=True)


def format_log_line(step: int, max_steps: int, epoch: float, values: dict) -> str:
    """``step 20/100 (epoch 0.45): loss 1.234, learning_rate 0.05, ...`` (``None`` values left out)."""
    parts = [f"{k} {values[k]:.4g}" for k in LOG_KEYS if values.get(k) is not None]
    return f"step {step}/{max_steps} (epoch {epoch:.2f}): " + ", ".join(parts)


class Progress:
    """The progress bar (local main process, unless ``disable``) and the periodic training log lines."""

    def __init__(self, acc: Accelerator, max_steps: int, start_step: int, steps_per_epoch: int,
                 logging_steps: int | None, disable: bool = False, kd_alpha: float = 0.0):
        self.acc, self.max_steps, self.spe, self.logging_steps = acc, max_steps, steps_per_epoch, logging_steps
        self.kd_alpha = kd_alpha  # the run's KD weight (0 without teachers), for the window's kd_weight
        # leave=False: runs driven many times from one process (hf-kd reproduce) do not stack finished bars.
        self.bar = tqdm(total=max_steps, initial=start_step, desc="training", unit="step", leave=False,
                        dynamic_ncols=True, disable=disable or not acc.is_local_main_process)
        self.window = loss_window()

    @contextlib.contextmanager
    def running(self):
        """Route log records through ``tqdm.write`` while the bar is shown (they would break it otherwise)."""
        with logging_redirect_tqdm() if not self.bar.disable else contextlib.nullcontext():
            try:
                yield self
            finally:
                self.bar.close()

    def step_done(self, step: int, result) -> None:
        """Optimizer step ``step`` (0-based) gave ``result`` (its ``loss``, ``ce`` and ``kd`` tensors)."""
        self.window.add(step, result.ce, result.kd, result.loss)
        self.bar.update(1)

    def should_log(self, step: int) -> bool:
        return bool(self.logging_steps) and step % self.logging_steps == 0

    def log(self, step: int, learning_rate: float, cost: dict) -> dict:
        """One log line from the window's losses (one sync) and the cost meter's ``cost`` values."""
        values = {**window_values(self.window, self.acc, self.kd_alpha), "learning_rate": learning_rate, **cost}
        epoch = step / self.spe
        row = {"step": step, "epoch": round(epoch, 4), **values}
        if values["loss"] is not None and not math.isfinite(values["loss"]):
            return row  # the caller stops the run with its one-line divergence error
        logger.info(format_log_line(step, self.max_steps, epoch, values))
        if values["loss"] is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
        self.acc.log({f"train/{k}": v for k, v in values.items() if v is not None}, step=step)
        return row
