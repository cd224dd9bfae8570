"""``DistillationTrainer``: MLM pretraining with KD from one or more teachers, a KD cutoff, and cost accounting.

    from hf_kd import DistillationTrainer, DistillationTrainingArguments
    args = DistillationTrainingArguments(output_dir="out", max_steps=1000, kd_alpha=0.5, kd_stop_ratio=0.5)
    trainer = DistillationTrainer(model=student, teacher_model=["teacher-a", teacher_b], args=args,
                                  train_dataset=..., data_collator=DataCollatorForLanguageModeling(tok))
    trainer.train()

Loss normalisation (``../shared/DESIGN.md``): every term is a sum over its positions divided by the count
of those positions in the whole optimizer step (all micro-batches; all ranks under
``average_tokens_across_devices``). The Trainer passes the global masked-token count as
``num_items_in_batch``; we count the KD positions ourselves in :meth:`get_batch_samples` with the same
semantics, set ``loss_is_scaled_for_ga = True`` so the Trainer does not divide again, and multiply by the
number of processes because DDP/DeepSpeed average gradients over ranks. ``teacher_model=None`` runs the
no-KD baseline through the very same path -- unlike a plain ``Trainer`` with ``BertForMaskedLM``, which
ignores ``num_items_in_batch`` and is wrong under gradient accumulation in transformers 5.x.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import AutoModelForMaskedLM, Trainer

from .callbacks import CostCallback
from .config import DistillationTrainingArguments
from .losses import IGNORE_INDEX, distillation_loss
from .schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices
from .sparse_head import SparseHead
from .teachers import check_teacher_vocab, freeze_teacher, load_pretrained, release_teachers

logger = logging.getLogger(__name__)

TeacherSpec = torch.nn.Module | str | Sequence[torch.nn.Module | str] | None


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf (``on_nonfinite_loss="stop"``)."""


def _teacher_dtype(args: DistillationTrainingArguments) -> torch.dtype | None:
    if args.teacher_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    return getattr(torch, args.teacher_dtype)


def load_teachers(spec: TeacherSpec, args: DistillationTrainingArguments) -> tuple[list[torch.nn.Module], list[str]]:
    """Models, paths or Hub ids (or a list of them) -> frozen teacher modules and their display names."""
    if spec is None:
        spec = args.teacher_model_name_or_path or []
    items = [spec] if isinstance(spec, torch.nn.Module | str) else list(spec)
    teachers, names = [], []
    for item in items:
        if isinstance(item, str):
            model = load_pretrained(item, AutoModelForMaskedLM, dtype=_teacher_dtype(args),
                                    trust_remote_code=False, allow_pickle=args.allow_pickle_weights)
            teachers.append(model)
            names.append(item)
        else:
            teachers.append(item)
            names.append(getattr(getattr(item, "config", None), "_name_or_path", "") or type(item).__name__)
    return teachers, names


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is ``(1 - a) * MLM + a * T^2 * KL`` until the KD stop step.

    Args:
        teacher_model: a model, a path/Hub id, a list of those, or ``None`` (no-KD baseline; falls back to
            ``args.teacher_model_name_or_path``). Teachers run in eval mode under ``no_grad`` on the
            student's device and are never in the optimizer.
        Everything else as for ``transformers.Trainer``.
    """

    # We normalise by the step-level counts ourselves (see module docstring).
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, teacher_model: TeacherSpec = None, args: DistillationTrainingArguments = None,
                 **kwargs):
        if args is None or not isinstance(args, DistillationTrainingArguments):
            raise TypeError("DistillationTrainer needs args=DistillationTrainingArguments(...)")
        self.teachers, self.teacher_names = load_teachers(teacher_model, args)
        check_teacher_vocab(model, self.teachers, self.teacher_names)
        if args.kd_teacher_selection == "sample" and len(self.teachers) == 1:
            logger.info("kd_teacher_selection='sample' with one teacher: that teacher is used at every KD step")
        super().__init__(model=model, args=args, **kwargs)
        # Count labelled tokens for every model, so num_items_in_batch always reaches compute_loss.
        self.model_accepts_loss_kwargs = True
        self.cost_callback = CostCallback(teachers=self.teachers, unit="tokens")
        self.callback_handler.callbacks.insert(0, self.cost_callback)  # before reporters, so they see the keys
        self._prepare_teachers()
        self._student_head = SparseHead.attach(self.model) if args.sparse_mlm_head else None
        self._teacher_heads = [SparseHead.attach(t) if args.sparse_mlm_head else None for t in self.teachers]
        self._teachers_released = False
        self._kd_count: torch.Tensor | None = None
        self._reset_log_sums()
        self.teacher_calls: list[tuple[int, int]] = []  # (global_step, teacher index), for audits and tests

    # -- teachers ---------------------------------------------------------------------------------------
    def _prepare_teachers(self) -> None:
        from .distributed import prepare_teachers  # one place for per-engine teacher placement

        self.teachers = prepare_teachers(self.teachers, self.accelerator, self.args, _teacher_dtype(self.args))
        for t in self.teachers:
            freeze_teacher(t)

    @property
    def kd_stop_step(self) -> int:
        return resolve_kd_stop_step(self.state.max_steps, self.args.kd_stop_ratio, self.args.kd_stop_steps)

    def kd_active(self, step: int | None = None) -> bool:
        step = self.state.global_step if step is None else step
        return bool(self.teachers) and kd_is_active(step, self.kd_stop_step)

    # -- step-level counts ------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        local_tokens = sum(int(_attention(b).sum()) for b in batch_samples)
        self.cost_callback.add_items(local_tokens)
        self._kd_count = None
        if self.args.kd_positions == "all" and self.kd_active():
            count = torch.tensor(local_tokens, device=device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._kd_count = count
        return batch_samples, num_items

    # -- the loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self._eval_loss(model, inputs, return_outputs)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        step = self.state.global_step
        masked = labels != IGNORE_INDEX
        active = self.kd_active(step)
        if not active and self.teachers and not self._teachers_released:
            release_teachers(self.teachers)
            self._teachers_released = True
        kd_mask = masked if self.args.kd_positions == "masked" else _attention(inputs).bool()
        student_rows = masked if not active or self.args.kd_positions == "masked" else None
        s_logits, rows = self._logits(model, self._student_head, inputs, student_rows)
        labels_rows = labels[rows] if rows is not None else labels
        t_logits = self._teacher_logits(inputs, kd_mask, step) if active else None
        ce_den = num_items_in_batch if num_items_in_batch is not None else masked.sum().clamp(min=1)
        kd_den = ce_den if self._kd_count is None else self._kd_count
        # Sparse student rows are only used when they are exactly the KD rows (masked positions).
        out = distillation_loss(
            s_logits, labels_rows, t_logits, kd_mask if rows is None else None, alpha=self.args.kd_alpha, temperature=self.args.kd_temperature,
            divergence=self.args.kd_divergence, ce_denominator=ce_den, kd_denominator=kd_den,
        )
        self._record(out)
        loss = self._check_finite(out.loss, step)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # ranks' gradients are averaged; the count is global
        return (loss, {"logits": s_logits}) if return_outputs else loss

    def _logits(self, model, head: SparseHead | None, inputs: dict, rows: torch.Tensor | None):
        """Logits of ``model`` at ``rows`` ([M, V], sparse head) or everywhere ([B, L, V]); returns (logits, rows)."""
        if head is not None and rows is not None:
            with head.select(rows):
                return model(**inputs).logits, rows
        return model(**inputs).logits, None

    @torch.no_grad()
    def _teacher_logits(self, inputs: dict, kd_mask: torch.Tensor, step: int) -> list[torch.Tensor]:
        idx = teacher_indices(step, len(self.teachers), self.args.kd_teacher_selection, self.args.seed)
        logits = []
        for i in idx:
            self.teacher_calls.append((step, i))
            t_logits, rows = self._logits(self.teachers[i], self._teacher_heads[i], inputs, kd_mask)
            logits.append(t_logits if rows is not None else t_logits.reshape(-1, t_logits.shape[-1])[kd_mask.reshape(-1)])
        return logits

    def _check_finite(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        if torch.isfinite(loss.detach()).all():
            return loss
        if self.args.on_nonfinite_loss == "skip":
            logger.warning("non-finite training loss at step %d: step skipped (its gradient is zero)", step)
            return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at step {step}; stopping (the last saved checkpoint is intact). "
            "Lower the learning rate, check the data, or pass --on_nonfinite_loss skip"
        )

    def _eval_loss(self, model, inputs, return_outputs):
        """Plain MLM loss (mean over masked tokens) of the student; never calls a teacher."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        masked = labels != IGNORE_INDEX
        logits, rows = self._logits(model, self._student_head, inputs, masked)
        flat = logits if rows is not None else logits.reshape(-1, logits.shape[-1])[masked.reshape(-1)]
        target = labels[masked]
        loss = torch.nn.functional.cross_entropy(flat.float(), target, reduction="sum") / masked.sum().clamp(min=1)
        if not return_outputs:
            return loss
        preds = torch.full_like(labels, IGNORE_INDEX)
        preds[masked] = flat.argmax(-1)
        return loss, {"loss": loss, "logits": preds}

    # -- logging ----------------------------------------------------------------------------------------
    def _reset_log_sums(self) -> None:
        self._log_sums = {"mlm_loss": 0.0, "kd_loss": 0.0, "kd_micro": 0.0}
        self._log_steps: set[int] = set()

    def _record(self, out) -> None:
        self._log_steps.add(self.state.global_step)
        self._log_sums["mlm_loss"] += float(out.ce)
        if out.kd is not None:
            self._log_sums["kd_loss"] += float(out.kd)
            self._log_sums["kd_micro"] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training line: add the two unweighted terms and the KD weight
            steps = max(1, len(self._log_steps))
            sums = torch.tensor([self._log_sums["mlm_loss"], self._log_sums["kd_loss"], self._log_sums["kd_micro"]],
                                device=self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            # Each micro-batch holds its share of the step mean (normalised by global counts): sum over
            # micro-batches and ranks, then average over the logged steps.
            logs["mlm_loss"] = round(sums[0].item() / steps, 6)
            if sums[2] > 0:
                logs["kd_loss"] = round(sums[1].item() / steps, 6)
            logs["kd_weight"] = kd_weight(self.state.global_step - 1, self.args.kd_alpha, self.kd_stop_step) \
                if self.teachers else 0.0
            self._reset_log_sums()
        super().log(logs, start_time)


def _attention(batch: dict) -> torch.Tensor:
    """Non-padding positions of a batch: its attention mask, or all ones."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"]
    return torch.ones_like(batch["input_ids"])
