"""The loss terms of a training log line: summed on the device per micro-batch, read once per log line.

A log line covers a *window* of optimizer steps (``logging_steps`` of them). Its keys:

| key | meaning over the window |
|---|---|
| ``mlm_loss`` | mean over the window's steps of the step's hard-label loss (``clm_loss``, ``task_loss`` per task) |
| ``loss`` | (vision; the text Trainer logs its own) mean over the window's steps of the weighted objective |
| ``kd_loss`` | mean over the window's *KD* steps of the step's KD term (absent when the window has none) |
| ``kd_weight`` | mean over the window's steps of the KD weight: ``kd_alpha x (KD steps) / (steps)``; equals |
|  | ``kd_alpha`` on a window of KD steps, 0 after the stop, in between on the window that straddles it |

Each micro-batch contributes its share of its step's mean (the trainer normalises every term by the step's
count). Under ``average_tokens_across_devices`` that count is global, so the shares of all ranks sum to the
step mean; without it each rank's shares already sum to *its own* step mean, and the ranks are averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def window_terms(mlm_sum: float, kd_sum: float, steps: int, kd_steps: int, alpha: float, world_size: int = 1,
                 tokens_averaged_across_devices: bool = True, ce_key: str = "mlm_loss") -> dict[str, float]:
    """The log keys above from the window's sums (already summed over micro-batches and ranks); the hard-label
    term is logged as ``ce_key`` (``clm_loss`` for causal LMs)."""
    ranks = 1 if tokens_averaged_across_devices else max(1, world_size)
    values = {ce_key: round(mlm_sum / ranks / max(1, steps), 6)}
    if kd_steps:
        values["kd_loss"] = round(kd_sum / ranks / kd_steps, 6)
    values["kd_weight"] = round(alpha * kd_steps / steps, 6) if steps else 0.0
    return values


class TermWindow:
    """On-device sums of the logged terms since the last log line (no host sync per micro-batch).

    Used by every task: text logs its hard-label term as ``mlm_loss``/``clm_loss``, vision as ``task_loss`` and
    also the weighted objective ``loss`` (``with_loss``), which the text Trainer logs itself.
    """

    def __init__(self, ce_key: str = "mlm_loss", with_loss: bool = False) -> None:
        self.ce_key, self.with_loss = ce_key, with_loss
        self.reset()

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # [hard-label term, KD term, objective]
        self.steps: set[int] = set()
        self.kd_steps: set[int] = set()

    @property
    def empty(self) -> bool:
        return not self.steps

    def add(self, step: int, ce: torch.Tensor, kd: torch.Tensor | None, loss: torch.Tensor | None = None) -> None:
        """One micro-batch of optimizer ``step``: its hard-label share, on a KD step its KD share, and (for
        ``with_loss``) its share of the objective."""
        self.steps.add(step)
        ce = ce.detach().float()
        zero = torch.zeros_like(ce)
        if kd is not None:
            self.kd_steps.add(step)
        terms = torch.stack([ce, kd.detach().float() if kd is not None else zero,
                             loss.detach().float() if loss is not None else zero])
        self._sums = terms if self._sums is None else self._sums + terms

    def _summed(self, device: torch.device | None, world_size: int,
                reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        sums = self._sums if self._sums is not None else torch.zeros(3, device=device)
        return reduce_sum(sums) if world_size > 1 and reduce_sum is not None else sums

    def finite(self, world_size: int = 1, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
        """Every rank's terms so far are finite (summed over ranks first, so all ranks get the same answer and
        none hangs in a later collective); does not reset."""
        return self._sums is None or bool(torch.isfinite(self._summed(None, world_size, reduce_sum)).all())

    def read(self, alpha: float, device: torch.device, world_size: int = 1, tokens_averaged_across_devices: bool = True,
             reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The window's log keys; sums over ranks with ``reduce_sum`` (every rank must call this), then resets."""
        ce_sum, kd_sum, loss_sum = self._summed(device, world_size, reduce_sum).tolist()  # the window's one host read
        values = window_terms(ce_sum, kd_sum, len(self.steps), len(self.kd_steps), alpha, world_size,
                              tokens_averaged_across_devices, self.ce_key)
        if self.with_loss:
            ranks = 1 if tokens_averaged_across_devices else max(1, world_size)
            values = {"loss": round(loss_sum / ranks / max(1, len(self.steps)), 6), **values}
        self.reset()
        return values
