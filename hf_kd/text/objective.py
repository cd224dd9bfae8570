"""The trainer's objective as an object: one per task, chosen once when the trainer is built.

:class:`Objective` is all ``DistillationTrainer`` knows of its task: how to count a step's loss positions, the
training loss of a micro-batch, the evaluation loss, and the key its hard-label term is logged under.
:class:`~hf_kd.text.mlm_objective.MLMObjective` (CE at masked positions, sparse MLM head) and
:class:`~hf_kd.text.clm_objective.CLMObjective` (next-token CE, the chunked fused-head loss) implement it;
both get the teacher side from a :class:`~hf_kd.text.teacher_targets.TeacherSource`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.losses import DistillationLoss


@dataclass(frozen=True)
class LossSettings:
    """The KD settings every objective applies (from ``DistillationTrainingArguments``)."""

    alpha: float
    temperature: float
    divergence: str
    kd_all_positions: bool  # kd_positions == "all"
    missing_mass: str = "rest"  # stored targets (a teacher cache): hf_kd.core.sparse_kd.sparse_kd_per_row

    @classmethod
    def from_args(cls, args, missing_mass: str = "rest") -> LossSettings:
        return cls(alpha=args.kd_alpha, temperature=args.kd_temperature, divergence=args.kd_divergence,
                   kd_all_positions=args.kd_positions == "all", missing_mass=missing_mass)


@dataclass
class StepCounts:
    """Positions of the whole optimizer step (all micro-batches; all ranks when gathered), as device tensors.

    ``ce``: the CE denominator, ``None`` to keep the Trainer's ``num_items_in_batch``; ``kd``: the KD
    denominator when KD has positions of its own (``kd_positions="all"`` while KD is on), else ``None`` (= ``ce``).
    """

    ce: torch.Tensor | None = None
    kd: torch.Tensor | None = None


@dataclass
class MicroBatch:
    """What the trainer hands an objective for one training micro-batch."""

    inputs: dict  # the collated batch, labels included
    step: int  # the optimizer step being computed
    kd_on: bool  # KD is active at this step (the teachers may be called)
    ce_count: torch.Tensor | None  # the step's CE denominator (num_items_in_batch), None outside a Trainer step
    kd_count: torch.Tensor | None  # the step's KD denominator when it differs from ce_count


class Objective(Protocol):
    """What a task contributes to ``DistillationTrainer``."""

    log_key: str  # the logged hard-label term: "mlm_loss" / "clm_loss"

    def step_counts(self, batch_samples: list[dict], device, kd_on: bool,
                    gather: Callable[[torch.Tensor], torch.Tensor]) -> StepCounts:
        """The step's denominators; ``gather`` sums a count over ranks (identity when not averaging)."""
        ...

    def train_loss(self, model, batch: MicroBatch) -> tuple[DistillationLoss, dict]:
        """The micro-batch's loss terms and the outputs ``compute_loss`` returns with them."""
        ...

    def eval_loss(self, model, inputs: dict, return_outputs: bool):
        """Mean hard-label loss of the student (never calls a teacher); with outputs, predictions as ``logits``."""
        ...

    def release_teachers(self) -> None:
        """KD is over: free the teacher side for the rest of the run."""
        ...


def attention(batch: dict) -> torch.Tensor:
    """Non-padding positions of a batch: its attention mask, or all ones."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"]
    return torch.ones_like(batch["input_ids"])


def denominator(count: torch.Tensor | None, fallback: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The step's count, or the micro-batch's own outside a Trainer step; at least 1 (a step without any loss
    position has loss 0, not 0/0 = NaN)."""
    return (torch.as_tensor(count) if count is not None else fallback()).clamp(min=1)
