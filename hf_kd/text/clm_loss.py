"""Causal-LM loss of ``DistillationTrainer`` (mixed into it; the MLM loss stays in ``trainer.py``).

Same objective, normalisation, cutoff, ensembles and divergences as the MLM path; the positions are the
next-token positions of :func:`hf_kd.text.clm.loss_positions`. By default the loss comes from the final hidden
states through :func:`hf_kd.core.chunked_kd.chunked_distillation_loss`, so neither the student's nor the
teachers' ``[positions, vocab]`` logits exist; ``clm_chunk_size=0`` (and DeepSpeed ZeRO-3, whose head weights
are sharded outside the forward, or a model that post-processes its logits) uses full logits instead.
"""

from __future__ import annotations

import torch

from ..core.chunked_kd import chunked_distillation_loss, default_chunk_size
from ..core.losses import DistillationLoss, distillation_loss
from ..core.schedule import teacher_indices
from .clm import HiddenCapture, chunked_ce_and_argmax, count_positions, fused_head, loss_positions
from .sparse_head import Rows

MODEL_INPUT_EXCLUDE = ("labels", "shift_labels")


class CausalLMLossMixin:
    """``_clm_*`` methods of :class:`hf_kd.text.trainer.DistillationTrainer` (uses its teachers, args, schedule)."""

    def _clm_setup(self) -> None:
        zero3 = self.is_deepspeed_enabled and getattr(
            getattr(self.accelerator.state, "deepspeed_plugin", None), "zero_stage", 0) == 3
        heads = [fused_head(m) for m in (self.model, *self.teachers)]
        chunked = self.args.clm_chunk_size != 0 and not zero3 and all(h is not None for h in heads)
        self._clm_captures = [HiddenCapture(h) for h in heads] if chunked else None
        self._clm_chunk = self.args.clm_chunk_size or default_chunk_size(heads[0].out_features if heads[0] else 1)

    def _clm_step_counts(self, batch_samples: list, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss positions (CE) and, under ``kd_positions='all'`` while KD is on, KD positions of the whole step."""
        counts = [sum(count_positions(b).to(device) for b in batch_samples)]
        if self.args.kd_positions == "all" and self.kd_active():
            counts.append(sum(count_positions(b, True).to(device) for b in batch_samples))
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = [self.accelerator.gather(c.reshape(1)).sum() for c in counts]
        return counts[0], counts[1] if len(counts) > 1 else None

    def _clm_loss(self, model, inputs: dict, active: bool, step: int, num_items_in_batch) -> DistillationLoss:
        all_rows = active and self.args.kd_positions == "all"
        rows, labels = loss_positions(inputs, inputs["labels"], all_rows)
        model_inputs = {k: v for k, v in inputs.items() if k not in MODEL_INPUT_EXCLUDE}
        ce_den = (torch.as_tensor(num_items_in_batch) if num_items_in_batch is not None
                  else count_positions(inputs)).clamp(min=1)
        kw = dict(alpha=self.args.kd_alpha, temperature=self.args.kd_temperature, divergence=self.args.kd_divergence,
                  ce_denominator=ce_den, kd_denominator=self._kd_count if all_rows else ce_den)
        idx = teacher_indices(step, len(self.teachers), self.args.kd_teacher_selection, self.args.seed) if active else []
        if self._clm_captures is None:
            s_logits = rows.take(model(**model_inputs).logits)
            with self._teacher_context():
                t_logits = [self._clm_teacher_call(i, step, model_inputs, rows) for i in idx]
            return distillation_loss(s_logits, labels, t_logits or None, **kw)
        hidden = self._clm_hidden(0, model, model_inputs, rows)
        with self._teacher_context():
            teachers = [(self._clm_teacher_call(i, step, model_inputs, rows),
                         self._clm_captures[i + 1].head.weight, self._clm_captures[i + 1].head.bias) for i in idx]
        head = self._clm_captures[0].head
        return chunked_distillation_loss(hidden, head.weight, head.bias, labels, teachers, chunk_size=self._clm_chunk,
                                         **kw)

    def _teacher_context(self):
        # inference_mode skips autograd bookkeeping; ZeRO-3's gather hooks write into parameters -> no_grad.
        return torch.no_grad() if self.is_deepspeed_enabled else torch.inference_mode()

    def _clm_hidden(self, which: int, model, model_inputs: dict, rows: Rows) -> torch.Tensor:
        with self._clm_captures[which].rows(rows) as got:
            model(**model_inputs)
        return got.hidden

    def _clm_teacher_call(self, i: int, step: int, model_inputs: dict, rows: Rows) -> torch.Tensor:
        """Teacher ``i``'s final hidden states (chunked path) or logits (full path) at ``rows``."""
        self._recent_teacher_calls.append((step, i))
        if self._clm_captures is None:
            return rows.take(self.teachers[i](**model_inputs).logits)
        return self._clm_hidden(i + 1, self.teachers[i], model_inputs, rows)

    def _clm_eval_loss(self, model, inputs: dict, return_outputs: bool):
        """Mean next-token CE of the student over the batch's loss positions; never calls a teacher.

        ``preds[b, i]`` (with ``return_outputs``) is the predicted token ``i + 1``, -100 where no loss is taken.
        """
        rows, labels = loss_positions(inputs, inputs["labels"])
        model_inputs = {k: v for k, v in inputs.items() if k not in MODEL_INPUT_EXCLUDE}
        if self._clm_captures is None:
            logits = rows.take(model(**model_inputs).logits).float()
            ce_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            row_preds = logits.argmax(-1)
        else:
            hidden = self._clm_hidden(0, model, model_inputs, rows)
            head = self._clm_captures[0].head
            ce_sum, row_preds = chunked_ce_and_argmax(hidden, head.weight, head.bias, labels, self._clm_chunk)
        loss = ce_sum / rows.mask.sum().clamp(min=1)
        if not return_outputs:
            return loss
        preds = torch.full_like(inputs["labels"], -100)
        preds.view(-1).index_copy_(0, rows.index, row_preds)
        return loss, {"loss": loss, "logits": preds}
