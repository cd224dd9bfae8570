"""The causal-LM objective: next-token CE and KD, by default from final hidden states a chunk at a time.

Same objective, normalisation, cutoff, ensembles and divergences as the MLM path; the positions are the
next-token positions of :func:`hf_kd.text.clm.loss_positions`, counted here for the whole step (the Trainer's
count depends on the model's loss type). By default the loss comes from the final hidden states through
:func:`hf_kd.core.chunked_kd.chunked_distillation_loss`, so neither the student's nor the teachers'
``[positions, vocab]`` logits exist. Full logits are used instead with ``clm_chunk_size=0``, under DeepSpeed
ZeRO-3 (head weights sharded outside the forward), and when a model's logits are not ``head(hidden)`` -- which
is not trusted from a list of config fields but checked on the first batch against the model's own logits
(:func:`hf_kd.text.clm.head_differs`; e.g. Falcon-H1 scales them by ``lm_head_multiplier`` in ``forward``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..core.chunked_kd import chunked_distillation_loss, default_chunk_size
from ..core.losses import DistillationLoss, distillation_loss
from ..core.sparse_kd import SparseTargets, sparse_distillation_loss
from .cached_teachers import CachedTeachers
from .clm import HiddenCapture, chunked_ce_and_argmax, count_positions, fused_head, head_differs, loss_positions
from .objective import LossSettings, MicroBatch, StepCounts, denominator
from .rows import Rows
from .teacher_targets import LiveTeachers, RowReader, full_logits

logger = logging.getLogger(__name__)

MODEL_INPUT_EXCLUDE = ("labels", "shift_labels")


def hidden_reader(capture: HiddenCapture) -> RowReader:
    """A teacher's target for the chunked loss: its final hidden states at the rows, with its head."""

    def read(model: torch.nn.Module, inputs: dict, rows: Rows):
        with capture.rows(rows) as got:
            model(**inputs)
        hidden, got.hidden = got.hidden, None  # the capture must not keep the activations alive
        return hidden, capture.head.weight, capture.head.bias

    return read


class CLMObjective:
    """:class:`~hf_kd.text.objective.Objective` of causal LMs.

    Args:
        student: the student module (as the Trainer holds it, before any wrapping).
        teachers: the live teachers whose readers this objective sets, or stored targets (no teacher modules).
        settings: the KD settings; chunk_size: ``clm_chunk_size`` (0 = full logits, ``None`` = auto).
        sharded_heads: DeepSpeed ZeRO-3 (head weights are gathered only inside the forward: full logits).
    """

    log_key = "clm_loss"

    def __init__(self, student: torch.nn.Module, teachers: LiveTeachers | CachedTeachers, settings: LossSettings,
                 chunk_size: int | None, sharded_heads: bool):
        self.teachers = teachers
        self.settings = settings
        heads = [fused_head(m) for m in (student, *teachers.modules)]
        self._captures: list[HiddenCapture] | None = None
        if chunk_size != 0 and not sharded_heads and all(h is not None for h in heads):
            self._captures = [HiddenCapture(h) for h in heads]
        self._chunk = chunk_size or default_chunk_size(heads[0].out_features if heads[0] is not None else 1)
        # The fused heads are checked once against the models' own logits: the student's on its first batch, the
        # teachers' on the first training batch (evaluation before training runs no teacher, maybe not placed yet).
        self._check_student = self._check_teachers = self._captures is not None
        self._set_readers()

    def _set_readers(self) -> None:
        if not isinstance(self.teachers, LiveTeachers):
            return
        if self._captures is None:
            self.teachers.readers[:] = [full_logits] * len(self.teachers.modules)
        else:
            self.teachers.readers[:] = [hidden_reader(c) for c in self._captures[1:]]

    def _verify_heads(self, model, model_inputs: dict, teachers: bool) -> None:
        """Fall back to full logits for good if any model's logits are not its head applied to its hidden states."""
        pairs = []
        if self._check_student:
            pairs.append((getattr(model, "module", model), self._captures[0]))
        if teachers and self._check_teachers:
            pairs += list(zip(self.teachers.modules, self._captures[1:]))
        self._check_student = False
        self._check_teachers = self._check_teachers and not teachers
        for m, capture in pairs:
            why = head_differs(m, capture, model_inputs)
            if why is not None:
                logger.warning("causal-LM loss: using full logits (not the chunked head): %s", why)
                self._drop_captures()
                return

    def _drop_captures(self) -> None:
        for c in self._captures or ():
            c.remove()
        self._captures = None
        self._check_student = self._check_teachers = False
        self._set_readers()

    def step_counts(self, batch_samples: Sequence[dict], device, kd_on: bool,
                    gather: Callable[[torch.Tensor], torch.Tensor]) -> StepCounts:
        ce = gather(sum(count_positions(b).to(device) for b in batch_samples))
        if not (kd_on and self.settings.kd_all_positions):
            return StepCounts(ce=ce)
        return StepCounts(ce=ce, kd=gather(sum(count_positions(b, True).to(device) for b in batch_samples)))

    def _student_hidden(self, model, model_inputs: dict, rows: Rows) -> torch.Tensor:
        with self._captures[0].rows(rows) as got:
            model(**model_inputs)
        hidden, got.hidden = got.hidden, None
        return hidden

    def train_loss(self, model, batch: MicroBatch) -> tuple[DistillationLoss, dict]:
        inputs = batch.inputs
        all_rows = batch.kd_on and self.settings.kd_all_positions
        rows, labels = loss_positions(inputs, inputs["labels"], all_rows)
        model_inputs = {k: v for k, v in inputs.items() if k not in MODEL_INPUT_EXCLUDE}
        if self._check_student or batch.kd_on and self._check_teachers:
            self._verify_heads(model, model_inputs, teachers=batch.kd_on)
        ce_den = denominator(batch.ce_count, lambda: count_positions(inputs))
        s = self.settings
        kw = dict(alpha=s.alpha, temperature=s.temperature, divergence=s.divergence, ce_denominator=ce_den,
                  kd_denominator=batch.kd_count if all_rows else ce_den)
        targets = self.teachers.targets(model_inputs, rows, batch.step) if batch.kd_on else []
        stored = bool(targets) and isinstance(targets[0], SparseTargets)
        if self._captures is None:
            logits = rows.take(model(**model_inputs).logits)
            if stored:
                kw.pop("divergence")
                return sparse_distillation_loss(logits, labels, targets[0], missing_mass=s.missing_mass, **kw), {}
            return distillation_loss(logits, labels, targets or None, **kw), {}
        head = self._captures[0].head
        hidden = self._student_hidden(model, model_inputs, rows)
        return chunked_distillation_loss(hidden, head.weight, head.bias, labels, targets, chunk_size=self._chunk,
                                         missing_mass=s.missing_mass, **kw), {}

    def eval_loss(self, model, inputs: dict, return_outputs: bool):
        """Mean next-token CE of the student over the batch's loss positions; never calls a teacher.

        ``preds[b, i]`` (with ``return_outputs``) is the predicted token ``i + 1``, -100 where no loss is taken.
        """
        inputs = dict(inputs)
        rows, labels = loss_positions(inputs, inputs["labels"])
        model_inputs = {k: v for k, v in inputs.items() if k not in MODEL_INPUT_EXCLUDE}
        if self._check_student:
            self._verify_heads(model, model_inputs, teachers=False)
        if self._captures is None:
            logits = rows.take(model(**model_inputs).logits).float()
            ce_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            row_preds = logits.argmax(-1)
        else:
            hidden = self._student_hidden(model, model_inputs, rows)
            head = self._captures[0].head
            ce_sum, row_preds = chunked_ce_and_argmax(hidden, head.weight, head.bias, labels, self._chunk)
        loss = ce_sum / rows.mask.sum().clamp(min=1)
        if not return_outputs:
            return loss
        preds = torch.full_like(inputs["labels"], -100)
        preds.view(-1).index_copy_(0, rows.index, row_preds)
        return loss, {"loss": loss, "logits": preds}

    def release_teachers(self) -> None:
        """Free the teachers and the hooks (and any activations) their captures hold."""
        if self._captures is not None:
            for c in self._captures[1:]:
                c.remove()
                c.hidden = None
            self._captures = self._captures[:1]
        self.teachers.release()
