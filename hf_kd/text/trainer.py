"""``DistillationTrainer``: MLM or causal-LM pretraining with KD from one or more teachers, a KD cutoff, and cost
accounting. The causal-LM loss lives in :mod:`hf_kd.text.clm_loss` (mixed in); the task is read from the model.

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
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer

from ..core.callbacks import CostCallback, PreOptimizerStepHook
from ..core.checkpointing import latest_complete_checkpoint, save_checkpoint_atomically
from ..core.errors import NonFiniteLossError
from ..core.losses import IGNORE_INDEX, distillation_loss
from ..core.schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices
from ..core.teachers import check_teacher_vocab, freeze_teacher, load_pretrained, release_teachers
from .clm import check_teachers_fit, resolve_kd_task
from .clm_loss import CausalLMLossMixin
from .config import DistillationTrainingArguments
from .sparse_head import SparseHead

logger = logging.getLogger(__name__)

TeacherSpec = torch.nn.Module | str | Sequence[torch.nn.Module | str] | None


def _teacher_dtype(args: DistillationTrainingArguments) -> torch.dtype | None:
    if args.teacher_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    return getattr(torch, args.teacher_dtype)


def load_teachers(spec: TeacherSpec, args: DistillationTrainingArguments,
                  auto_class=AutoModelForMaskedLM) -> tuple[list[torch.nn.Module], list[str]]:
    """Models, paths or Hub ids (or a list of them) -> frozen teacher modules and their display names."""
    if spec is None:
        spec = args.teacher_model_name_or_path or []
    items = [spec] if isinstance(spec, torch.nn.Module | str) else list(spec)
    teachers, names = [], []
    for item in items:
        if isinstance(item, str):
            model = load_pretrained(item, auto_class, dtype=_teacher_dtype(args),
                                    trust_remote_code=args.teacher_trust_remote_code,
                                    allow_pickle=args.allow_pickle_weights)
            teachers.append(model)
            names.append(item)
        else:
            teachers.append(item)
            names.append(getattr(getattr(item, "config", None), "_name_or_path", "") or type(item).__name__)
    return teachers, names


class DistillationTrainer(CausalLMLossMixin, Trainer):
    """A ``transformers.Trainer`` whose loss is ``(1 - a) * CE + a * T^2 * KL`` until the KD stop step, for masked
    LMs (CE at masked positions) and causal LMs (next-token CE and KD; ``args.kd_task``). Other models are refused.

    Args:
        teacher_model: a model, a path/Hub id, a list of those, or ``None`` (no-KD baseline; falls back to
            ``args.teacher_model_name_or_path``). Teachers run in eval mode under ``no_grad`` on the
            student's device and are never in the optimizer.
        Everything else as for ``transformers.Trainer``.
    """

    # We normalise by the step-level counts ourselves (see module docstring).
    loss_is_scaled_for_ga = True
    _staging_dir: str | None = None  # set while a checkpoint is being written (see _save_checkpoint)
    _nonfinite: tuple[int, float] | None = None  # (step, loss) of a non-finite loss not yet acted on
    _kd_stop_cache: tuple[int, int] | None = None  # (max_steps, stop step)

    def __init__(self, model=None, teacher_model: TeacherSpec = None, args: DistillationTrainingArguments = None,
                 **kwargs):
        if args is None or not isinstance(args, DistillationTrainingArguments):
            raise TypeError("DistillationTrainer needs args=DistillationTrainingArguments(...)")
        self.kd_task = resolve_kd_task(model, args.kd_task)  # refuses a model we have no loss for
        auto_class = AutoModelForCausalLM if self.kd_task == "clm" else AutoModelForMaskedLM
        self.teachers, self.teacher_names = load_teachers(teacher_model, args, auto_class)
        check_teacher_vocab(model, self.teachers, self.teacher_names)
        check_teachers_fit(self.kd_task, self.teachers, self.teacher_names, kwargs.get("processing_class"))
        if args.kd_teacher_selection == "sample" and not self.teachers:
            # 'mean' is the default, so 'sample' was asked for explicitly: without a teacher it would be ignored.
            raise ValueError("kd_teacher_selection='sample' needs at least one teacher (--teacher_model_name_or_path); "
                             "expected a teacher, or drop the flag for a no-KD baseline")
        if args.kd_teacher_selection == "sample" and len(self.teachers) == 1:
            logger.info("kd_teacher_selection='sample' with one teacher: that teacher is used at every KD step")
        super().__init__(model=model, args=args, **kwargs)
        # Count labelled tokens for every model, so num_items_in_batch always reaches compute_loss.
        self.model_accepts_loss_kwargs = True
        self.cost_callback = CostCallback(teachers=self.teachers, unit="tokens")
        self.callback_handler.callbacks.insert(0, self.cost_callback)  # before reporters, so they see the keys
        self.add_callback(PreOptimizerStepHook(self._guard_optimizer_step))
        self._prepare_teachers()
        sparse = args.sparse_mlm_head and self.kd_task == "mlm"
        self._student_head = SparseHead.attach(self.model) if sparse else None
        self._teacher_heads = [SparseHead.attach(t) if sparse else None for t in self.teachers]
        if self.kd_task == "clm":
            self._clm_setup()
        self._teachers_released = False
        self._kd_count: torch.Tensor | None = None
        self._reset_log_sums()
        self.teacher_calls: list[tuple[int, int]] = []  # (global_step, teacher index), for audits and tests

    # -- teachers ---------------------------------------------------------------------------------------
    def _prepare_teachers(self) -> None:
        from ..core.distributed import prepare_teachers  # one place for per-engine teacher placement

        self.teachers = prepare_teachers(self.teachers, self.accelerator, self.args, _teacher_dtype(self.args))
        for t in self.teachers:
            freeze_teacher(t)

    @property
    def kd_stop_step(self) -> int:
        # Cached per max_steps: resolving warns (kd_stop_steps beyond max_steps), and this runs every micro-batch.
        if self._kd_stop_cache is None or self._kd_stop_cache[0] != self.state.max_steps:
            stop = resolve_kd_stop_step(self.state.max_steps, self.args.kd_stop_ratio, self.args.kd_stop_steps)
            self._kd_stop_cache = (self.state.max_steps, stop)
        return self._kd_stop_cache[1]

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
        if self.kd_task == "clm":  # next-token counts of our own: the Trainer's depend on the model's loss_type
            num_items, self._kd_count = self._clm_step_counts(batch_samples, device)
        return batch_samples, num_items

    # -- the loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            if self.kd_task == "clm":
                return self._clm_eval_loss(model, dict(inputs), return_outputs)
            return self._eval_loss(model, inputs, return_outputs)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        step = self.state.global_step
        masked = labels != IGNORE_INDEX
        active = self.kd_active(step)
        if not active and self.teachers and not self._teachers_released:
            release_teachers(self.teachers)
            self._teachers_released = True
        if self.kd_task == "clm":
            out = self._clm_loss(model, {**inputs, "labels": labels}, active, step, num_items_in_batch)
            self._record(out)
            loss = self._check_finite(out.loss, step)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes
            return (loss, {}) if return_outputs else loss
        kd_mask = masked if self.args.kd_positions == "masked" else _attention(inputs).bool()
        student_rows = masked if not active or self.args.kd_positions == "masked" else None
        s_logits, rows = self._logits(model, self._student_head, inputs, student_rows)
        labels_rows = labels[rows] if rows is not None else labels
        t_logits = self._teacher_logits(inputs, kd_mask, step) if active else None
        # clamp: a step without any masked token has CE sum 0 and must give loss 0, not 0/0 = NaN
        ce_den = (torch.as_tensor(num_items_in_batch) if num_items_in_batch is not None else masked.sum()).clamp(min=1)
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

    def _teacher_logits(self, inputs: dict, kd_mask: torch.Tensor, step: int) -> list[torch.Tensor]:
        idx = teacher_indices(step, len(self.teachers), self.args.kd_teacher_selection, self.args.seed)
        # inference_mode skips all autograd bookkeeping (teacher forward ~15% faster than under no_grad on CPU,
        # benchmarks/kd_overhead.py); ZeRO-3's gather hooks write into parameters, which it forbids -> no_grad.
        ctx = torch.no_grad() if self.is_deepspeed_enabled else torch.inference_mode()
        logits = []
        with ctx:
            for i in idx:
                self.teacher_calls.append((step, i))
                t_logits, rows = self._logits(self.teachers[i], self._teacher_heads[i], inputs, kd_mask)
                logits.append(t_logits if rows is not None else t_logits.reshape(-1, t_logits.shape[-1])[kd_mask.reshape(-1)])
        return logits

    def _check_finite(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Note a non-finite loss; it is acted on before the optimizer step, where every rank can agree."""
        if torch.isfinite(loss.detach()).all():
            return loss
        if self._nonfinite is None:
            self._nonfinite = (step, loss.item())
        return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0 if self.args.on_nonfinite_loss == "skip" else loss

    def _guard_optimizer_step(self, optimizer) -> None:
        """Before each optimizer step (after clipping): stop, or drop the update, if a loss or gradient is non-finite.

        Raising at the loss would leave the other ranks waiting in the gradient all-reduce, so the decision is
        taken here, from a flag reduced over ranks. Dropping = gradients set to None, which torch optimizers
        skip entirely (no momentum or weight-decay update either); the learning-rate schedule still advances.
        """
        local, self._nonfinite = self._nonfinite, None
        # Under fp16 loss scaling, overflowing gradients are routine: the GradScaler skips that step itself.
        check_grads = getattr(self.accelerator, "scaler", None) is None
        bad_grads = check_grads and not _grads_finite(self.model)
        bad = torch.tensor(float(local is not None or bad_grads), device=self.args.device)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return
        step = self.state.global_step
        what = (f"training loss is {local[1]}" if local else "gradients are not finite" if bad_grads
                else "another rank's training loss is not finite")
        if self.args.on_nonfinite_loss == "skip" and not self.is_deepspeed_enabled:
            logger.warning("%s at step %d: update skipped (--on_nonfinite_loss skip)", what, step)
            optimizer.zero_grad(set_to_none=True)
            return
        last = latest_complete_checkpoint(self.args.output_dir)
        kept = f"the last checkpoint, {last}, is intact" if last else "no checkpoint had been saved"
        raise NonFiniteLossError(
            f"{what} at step {step}; training stopped and {kept}. Lower the learning rate, check the data, or pass "
            "--on_nonfinite_loss skip" + (" (not available under DeepSpeed, whose engine steps in backward)"
                                          if self.is_deepspeed_enabled else "")
        )

    # -- checkpoints: staged, then published by one rename (hf_kd.core.checkpointing) ---------------------------
    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        save_checkpoint_atomically(self, model, trial, super()._save_checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_dir is None:  # an async upload must not read the staging folder; pushed once published
            super()._push_from_checkpoint(checkpoint_folder)

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
            if self.args.kd_teacher_selection == "sample" and self.teacher_calls \
                    and self.teacher_calls[-1][0] == self.state.global_step - 1:
                logs["kd_teacher"] = self.teacher_calls[-1][1]  # the teacher of the step just done (audits)
            if self.kd_task == "clm":
                logs["clm_loss"] = logs.pop("mlm_loss")
            self._reset_log_sums()
        super().log(logs, start_time)


def _grads_finite(model: torch.nn.Module) -> bool:
    """Whether every local gradient is finite (one fused norm per device; sharded grads checked locally)."""
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all())


def _attention(batch: dict) -> torch.Tensor:
    """Non-padding positions of a batch: its attention mask, or all ones."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"]
    return torch.ones_like(batch["input_ids"])
