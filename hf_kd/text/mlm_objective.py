"""The masked-LM objective: CE at the masked positions, KD at ``kd_positions``, the head only where needed.

Normalisation (``docs/design.md``): CE is divided by the Trainer's ``num_items_in_batch`` (the step's masked
tokens); KD at ``kd_positions="all"`` by the step's non-padding tokens, counted here. With ``sparse_mlm_head``
student and teachers run their vocabulary projection only at the rows that carry a loss
(:mod:`hf_kd.text.sparse_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.chunked_kd import logits_distillation_loss
from ..core.losses import IGNORE_INDEX, DistillationLoss, distillation_loss
from ..core.sparse_kd import SparseTargets, sparse_distillation_loss
from .objective import LossSettings, MicroBatch, StepCounts, attention, denominator
from .rows import Rows
from .sparse_head import SparseHead
from .teacher_targets import RowReader, TeacherSource, full_logits


def mlm_reader(head: SparseHead | None) -> RowReader:
    """Logits at the rows: through the sparse head when the model has one, else the full logits."""
    if head is None:
        return full_logits

    def read(model: torch.nn.Module, inputs: dict, rows: Rows) -> torch.Tensor:
        with head.select(rows):
            return model(**inputs).logits

    return read


class MLMObjective:
    """:class:`~hf_kd.text.objective.Objective` of masked LMs."""

    log_key = "mlm_loss"

    def __init__(self, teachers: TeacherSource, settings: LossSettings, student_head: SparseHead | None):
        self.teachers = teachers
        self.settings = settings
        self.student_head = student_head

    @staticmethod
    def teacher_readers(teachers: Sequence[torch.nn.Module], sparse: bool) -> list[RowReader]:
        return [mlm_reader(SparseHead.attach(t) if sparse else None) for t in teachers]

    def step_counts(self, batch_samples: list[dict], device, kd_on: bool,
                    gather: Callable[[torch.Tensor], torch.Tensor]) -> StepCounts:
        if not (kd_on and self.settings.kd_all_positions):
            return StepCounts()
        return StepCounts(kd=gather(torch.as_tensor(sum(attention(b).sum() for b in batch_samples), device=device)))

    def _logits(self, model, inputs: dict, rows: Rows | None) -> tuple[torch.Tensor, Rows | None]:
        """Logits at ``rows`` ([M, V], sparse head) or everywhere ([B, L, V]); returns (logits, the rows used)."""
        if self.student_head is not None and rows is not None:
            with self.student_head.select(rows):
                return model(**inputs).logits, rows
        return model(**inputs).logits, None

    def train_loss(self, model, batch: MicroBatch) -> tuple[DistillationLoss, dict]:
        inputs = dict(batch.inputs)
        labels = inputs.pop("labels")
        masked = labels != IGNORE_INDEX
        masked_rows = Rows(masked)  # one row count per mask and micro-batch, shared by every selection below
        all_kd = self.settings.kd_all_positions
        kd_mask = attention(inputs).bool() if all_kd else masked
        kd_rows = Rows(kd_mask) if all_kd else masked_rows
        # Sparse student rows are only used when they are exactly the KD rows (masked positions).
        s_logits, rows = self._logits(model, inputs, None if batch.kd_on and all_kd else masked_rows)
        # CE (and KD, unless it covers every position) at the masked rows only: one fused pass over them. Taken
        # before the teachers run: an index made under their inference mode cannot enter autograd.
        shared = not (batch.kd_on and all_kd)
        if shared:
            at, at_labels = (s_logits if rows is not None else masked_rows.take(s_logits)), masked_rows.take(labels)
        t_logits = self.teachers.targets(inputs, kd_rows, batch.step) if batch.kd_on else None
        ce_den = denominator(batch.ce_count, masked.sum)
        kd_den = ce_den if batch.kd_count is None else batch.kd_count
        s = self.settings
        kw = dict(alpha=s.alpha, temperature=s.temperature, ce_denominator=ce_den, kd_denominator=kd_den)
        stored = bool(t_logits) and isinstance(t_logits[0], SparseTargets)
        if shared and stored:
            out = sparse_distillation_loss(at, at_labels, t_logits[0], missing_mass=s.missing_mass, **kw)
        elif shared and t_logits:
            out = logits_distillation_loss(at, at_labels, t_logits, divergence=s.divergence, **kw)
        elif shared:  # no KD: the CE alone
            out = distillation_loss(at, at_labels, None, **kw)
        elif stored:  # CE at the masked rows of the full logits, KD at every non-padding row
            out = sparse_distillation_loss(s_logits, labels, t_logits[0], kd_rows.index, missing_mass=s.missing_mass,
                                           **kw)
        else:
            out = distillation_loss(s_logits, labels, t_logits, kd_mask, divergence=s.divergence, **kw)
        return out, {"logits": s_logits}

    def eval_loss(self, model, inputs: dict, return_outputs: bool):
        """Plain MLM loss (mean over masked tokens) of the student; never calls a teacher."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        masked = labels != IGNORE_INDEX
        rows = Rows(masked)
        logits, sparse = self._logits(model, inputs, rows)
        flat = logits if sparse is not None else rows.take(logits)
        loss = torch.nn.functional.cross_entropy(flat.float(), rows.take(labels), reduction="sum")
        loss = loss / masked.sum().clamp(min=1)
        if not return_outputs:
            return loss
        preds = torch.full_like(labels, IGNORE_INDEX)
        preds.view(-1).index_copy_(0, rows.index, flat.argmax(-1))
        return loss, {"loss": loss, "logits": preds}

    def release_teachers(self) -> None:
        self.teachers.release()
