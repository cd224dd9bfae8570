"""The loss terms of a training log line: summed on the device per micro-batch, read once per log line.

A log line covers a *window* of optimizer steps (``logging_steps`` of them). Its keys:

| key | meaning over the window |
|---|---|
| ``mlm_loss`` | mean over the window's steps of the step's hard-label (MLM) loss |
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
    """On-device sums of the logged terms since the last log line (no host sync per micro-batch)."""

    def __init__(self, ce_key: str = "mlm_loss") -> None:
        self.ce_key = ce_key
        self.reset()

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None
        self.steps: set[int] = set()
        self.kd_steps: set[int] = set()

    def add(self, step: int, ce: torch.Tensor, kd: torch.Tensor | None) -> None:
        """One micro-batch of optimizer ``step``: its MLM share and, on a KD step, its KD share."""
        self.steps.add(step)
        ce = ce.detach().float()
        if kd is not None:
            self.kd_steps.add(step)
        terms = torch.stack([ce, kd.detach().float() if kd is not None else torch.zeros_like(ce)])
        self._sums = terms if self._sums is None else self._sums + terms

    def read(self, alpha: float, device: torch.device, world_size: int = 1, tokens_averaged_across_devices: bool = True,
             reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The window's log keys; sums over ranks with ``reduce_sum`` (every rank must call this), then resets."""
        sums = self._sums if self._sums is not None else torch.zeros(2, device=device)
        if world_size > 1 and reduce_sum is not None:
            sums = reduce_sum(sums)
        mlm_sum, kd_sum = sums.tolist()  # the window's one host read
        values = window_terms(mlm_sum, kd_sum, len(self.steps), len(self.kd_steps), alpha, world_size,
                              tokens_averaged_across_devices, self.ce_key)
        self.reset()
        return values
