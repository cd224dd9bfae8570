"""``DistillationTrainer``: MLM or causal-LM pretraining with KD from one or more teachers, a KD cutoff, and cost
accounting. The causal-LM loss lives in :mod:`hf_kd.text.clm_loss` (mixed in); the task is read from the model.

    from hf_kd import DistillationTrainer, DistillationTrainingArguments
    args = DistillationTrainingArguments(output_dir="out", max_steps=1000, kd_alpha=0.5, kd_stop_ratio=0.5)
    trainer = DistillationTrainer(model=student, teacher_model=["teacher-a", teacher_b], args=args,
                                  train_dataset=..., data_collator=DataCollatorForLanguageModeling(tok))
    trainer.train()

Loss normalisation (``docs/design.md``): every term is a sum over its positions divided by the count
of those positions in the whole optimizer step (all micro-batches; all ranks under
``average_tokens_across_devices``). The Trainer passes the global masked-token count as
``num_items_in_batch``; we count the KD positions ourselves in :meth:`get_batch_samples` with the same
semantics, set ``loss_is_scaled_for_ga = True`` so the Trainer does not divide again, and multiply by the
number of processes because DDP/DeepSpeed average gradients over ranks. ``teacher_model=None`` runs the
no-KD baseline through the very same path -- unlike a plain ``Trainer`` with ``BertForMaskedLM``, which
ignores ``num_items_in_batch`` and is wrong under gradient accumulation in transformers 5.x.

Logged terms (``hf_kd.core.log_terms``): a training log line covers the ``logging_steps`` optimizer steps since
the previous one. ``mlm_loss`` is the mean MLM term over those steps, ``kd_loss`` the mean KD term over the
window's KD steps only, and ``kd_weight`` the mean KD weight over the window (``kd_alpha`` x KD steps / steps:
``kd_alpha`` before the stop step, 0 after, a fraction on the window that straddles the stop).

Hot path: a micro-batch reads one value on the host, the number of its loss rows (a data-dependent shape:
one ``nonzero`` shared by student head, teacher heads and labels, :class:`~hf_kd.text.sparse_head.Rows`;
``kd_positions='all'`` adds one for its KD rows). Token counts, logged terms and the non-finite flag are
summed on the device; the guard reads one fused flag per optimizer step (reusing the
gradient norm the Trainer computes anyway) and the logged values are read once per log line.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer

from ..core.callbacks import CostCallback, PreOptimizerStepHook
from ..core.checkpointing import latest_complete_checkpoint, save_checkpoint_atomically
from ..core.errors import NonFiniteLossError
from ..core.log_terms import TermWindow
from ..core.losses import IGNORE_INDEX, distillation_loss
from ..core.schedule import kd_is_active, resolve_kd_stop_step, teacher_indices
from ..core.teachers import (
    check_teacher_tokenizers,
    check_teacher_vocab,
    freeze_teacher,
    load_pretrained,
    release_teachers,
    tokenizer_source,
)
from .clm import check_teachers_fit, resolve_kd_task
from .clm_loss import CausalLMLossMixin
from .config import DistillationTrainingArguments
from .sparse_head import Rows, SparseHead

logger = logging.getLogger(__name__)

TeacherSpec = torch.nn.Module | str | Sequence[torch.nn.Module | str] | None
TEACHER_CALLS_KEPT = 4096  # recent (step, teacher) pairs kept for audits; the total is teacher_forwards


def _teacher_dtype(args: DistillationTrainingArguments) -> torch.dtype:
    # Never None: transformers 5.x reads dtype=None as "the checkpoint's saved dtype" (a bf16 teacher in an fp32 run).
    if args.teacher_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
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
    _kd_stop_cache: tuple[int, int] | None = None  # (max_steps, stop step)

    def __init__(self, model=None, teacher_model: TeacherSpec = None, args: DistillationTrainingArguments = None,
                 **kwargs):
        if args is None or not isinstance(args, DistillationTrainingArguments):
            raise TypeError("DistillationTrainer needs args=DistillationTrainingArguments(...)")
        self.kd_task = resolve_kd_task(model, args.kd_task)  # refuses a model we have no loss for
        auto_class = AutoModelForCausalLM if self.kd_task == "clm" else AutoModelForMaskedLM
        self.teachers, self.teacher_names = load_teachers(teacher_model, args, auto_class)
        check_teacher_vocab(model, self.teachers, self.teacher_names)
        items = teacher_model if teacher_model is not None else args.teacher_model_name_or_path or []
        items = [items] if isinstance(items, torch.nn.Module | str) else list(items)
        check_teacher_tokenizers(kwargs.get("processing_class"), [tokenizer_source(i) for i in items],
                                 self.teacher_names, trust_remote_code=args.teacher_trust_remote_code)
        check_teachers_fit(self.kd_task, self.teachers, self.teacher_names)
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
        self._terms = TermWindow()
        self._nonfinite_flags: torch.Tensor | None = None  # [count, last value] of non-finite losses this step
        self._step_grad_norm = None  # the Trainer's gradient norm of the step being taken (see _get_grad_norm)
        self._recent_teacher_calls: deque[tuple[int, int]] = deque(maxlen=TEACHER_CALLS_KEPT)

    @property
    def teacher_calls(self) -> list[tuple[int, int]]:
        """The most recent (global_step, teacher index) pairs, one per teacher forward (bounded: audits, tests)."""
        return list(self._recent_teacher_calls)

    @property
    def teacher_forwards(self) -> int:
        """Teacher forwards of the whole run on this rank (checkpointed: a resumed run keeps counting)."""
        return self.cost_callback.meter.teacher_forwards

    def _load_callback_state(self) -> None:
        # --restore_callback_states_from_checkpoint rebuilds each stateful callback as ``type(cb)(**args)``:
        # a CostCallback without the teacher hooks, appended after the reporters. Keep ours (with its hooks,
        # first); it restores its own state from ``state.stateful_callbacks`` in on_train_begin.
        super()._load_callback_state()
        callbacks = self.callback_handler.callbacks
        callbacks[:] = [cb for cb in callbacks if not isinstance(cb, CostCallback)]
        callbacks.insert(0, self.cost_callback)

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
        # kd_alpha = 0: the KD term has no weight, so its teacher forwards would be pure cost.
        return bool(self.teachers) and self.args.kd_alpha > 0 and kd_is_active(step, self.kd_stop_step)

    # -- step-level counts ------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # A device tensor, read by the cost meter at logging time only (no host sync per step).
        local_tokens = torch.as_tensor(sum(_attention(b).sum() for b in batch_samples), device=device)
        self.cost_callback.add_items(local_tokens)
        self._kd_count = None
        if self.args.kd_positions == "all" and self.kd_active():
            count = local_tokens
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
        active = self.kd_active(step)
        if not active and self.teachers and not self._teachers_released:
            release_teachers(self.teachers)
            self._teachers_released = True
        if self.kd_task == "clm":
            out, outputs = self._clm_loss(model, {**inputs, "labels": labels}, active, step, num_items_in_batch), {}
        else:
            out, s_logits = self._mlm_loss(model, inputs, labels, active, step, num_items_in_batch)
            outputs = {"logits": s_logits}
        self._terms.add(step, out.ce, out.kd)
        loss = self._check_finite(out.loss)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # ranks' gradients are averaged; the count is global
        return (loss, outputs) if return_outputs else loss

    def _mlm_loss(self, model, inputs: dict, labels: torch.Tensor, active: bool, step: int, num_items_in_batch):
        """CE at masked positions + KD at ``kd_positions``; returns (the loss terms, the student's logits)."""
        masked = labels != IGNORE_INDEX
        masked_rows = Rows(masked)  # one row count per mask and micro-batch, shared by every selection below
        kd_mask = masked if self.args.kd_positions == "masked" else _attention(inputs).bool()
        kd_rows = masked_rows if self.args.kd_positions == "masked" else Rows(kd_mask)
        student_rows = masked_rows if not active or self.args.kd_positions == "masked" else None
        s_logits, rows = self._logits(model, self._student_head, inputs, student_rows)
        labels_rows = rows.take(labels) if rows is not None else labels
        t_logits = self._teacher_logits(inputs, kd_rows, step) if active else None
        # clamp: a step without any masked token has CE sum 0 and must give loss 0, not 0/0 = NaN
        ce_den = (torch.as_tensor(num_items_in_batch) if num_items_in_batch is not None else masked.sum()).clamp(min=1)
        kd_den = ce_den if self._kd_count is None else self._kd_count
        # Sparse student rows are only used when they are exactly the KD rows (masked positions).
        out = distillation_loss(
            s_logits, labels_rows, t_logits, kd_mask if rows is None else None, alpha=self.args.kd_alpha,
            temperature=self.args.kd_temperature, divergence=self.args.kd_divergence, ce_denominator=ce_den,
            kd_denominator=kd_den,
        )
        return out, s_logits

    def _logits(self, model, head: SparseHead | None, inputs: dict, rows: Rows | None):
        """Logits of ``model`` at ``rows`` ([M, V], sparse head) or everywhere ([B, L, V]); returns (logits, rows)."""
        if head is not None and rows is not None:
            with head.select(rows):
                return model(**inputs).logits, rows
        return model(**inputs).logits, None

    def _teacher_logits(self, inputs: dict, kd_rows: Rows, step: int) -> list[torch.Tensor]:
        idx = teacher_indices(step, len(self.teachers), self.args.kd_teacher_selection, self.args.seed)
        # inference_mode skips all autograd bookkeeping (teacher forward ~15% faster than under no_grad on CPU,
        # benchmarks/kd_overhead.py); ZeRO-3's gather hooks write into parameters, which it forbids -> no_grad.
        ctx = torch.no_grad() if self.is_deepspeed_enabled else torch.inference_mode()
        logits = []
        with ctx:
            for i in idx:
                self._recent_teacher_calls.append((step, i))
                t_logits, rows = self._logits(self.teachers[i], self._teacher_heads[i], inputs, kd_rows)
                logits.append(t_logits if rows is not None else kd_rows.take(t_logits))
        return logits

    def _check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Note a non-finite loss on the device; it is acted on before the optimizer step, where ranks can agree."""
        finite = torch.isfinite(loss.detach())
        flags = torch.stack([(~finite).float(), torch.where(finite, 0.0, loss.detach().float())])
        if self._nonfinite_flags is not None:  # keep the count, and the value of the latest non-finite loss
            flags = torch.stack([self._nonfinite_flags[0] + flags[0],
                                 torch.where(finite, self._nonfinite_flags[1], flags[1])])
        self._nonfinite_flags = flags
        if self.args.on_nonfinite_loss == "skip":
            return torch.where(finite, loss, loss.nan_to_num(0.0, 0.0, 0.0) * 0.0)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer computes the step's gradient norm (clipping or not) right before on_pre_optimizer_step:
        # kept so that the non-finite guard needs no second pass over the gradients.
        self._step_grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return self._step_grad_norm

    def _guard_optimizer_step(self, optimizer) -> None:
        """Before each optimizer step (after clipping): stop, or drop the update, if a loss or gradient is non-finite.

        Raising at the loss would leave the other ranks waiting in the gradient all-reduce, so the decision is
        taken here, from one fused flag reduced over ranks and read once per optimizer step. Dropping =
        gradients set to None, which torch optimizers skip entirely (no momentum or weight-decay update
        either); the learning-rate schedule still advances.
        """
        device = self.args.device
        loss_flags = self._nonfinite_flags if self._nonfinite_flags is not None else torch.zeros(2, device=device)
        self._nonfinite_flags = None
        # Under fp16 loss scaling, overflowing gradients are routine: the GradScaler skips that step itself.
        check_grads = getattr(self.accelerator, "scaler", None) is None
        grad_bad = _grads_bad(self.model, self._step_grad_norm, device) if check_grads else torch.zeros((), device=device)
        self._step_grad_norm = None
        local = torch.stack([loss_flags[0].to(device), grad_bad.float().to(device)])
        total = self.accelerator.reduce(local, reduction="sum") if self.args.world_size > 1 else local
        # The step's one host read: [bad ranks' losses, bad grads] over ranks, then this rank's flags and value.
        any_bad, _, local_bad, bad_grads, value = torch.cat([total.sum(0, keepdim=True), total[:1], local,
                                                              loss_flags[1:].to(device)]).tolist()
        if not any_bad:
            return
        step = self.state.global_step
        what = (f"training loss is {value}" if local_bad else "gradients are not finite" if bad_grads
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
        rows = Rows(masked)
        logits, sparse = self._logits(model, self._student_head, inputs, rows)
        flat = logits if sparse is not None else rows.take(logits)
        target = rows.take(labels)
        loss = torch.nn.functional.cross_entropy(flat.float(), target, reduction="sum") / masked.sum().clamp(min=1)
        if not return_outputs:
            return loss
        preds = torch.full_like(labels, IGNORE_INDEX)
        preds.view(-1).index_copy_(0, rows.index, flat.argmax(-1))
        return loss, {"loss": loss, "logits": preds}

    # -- logging ----------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training line: add the two unweighted terms and the KD weight of its window
            alpha = self.args.kd_alpha if self.teachers else 0.0
            logs.update(self._terms.read(alpha, self.args.device, self.args.world_size,
                                         self.args.average_tokens_across_devices,
                                         lambda t: self.accelerator.reduce(t, reduction="sum")))
            calls = self._recent_teacher_calls
            if self.args.kd_teacher_selection == "sample" and calls and calls[-1][0] == self.state.global_step - 1:
                logs["kd_teacher"] = calls[-1][1]  # the teacher of the step just done (audits)
            if self.kd_task == "clm":
                logs["clm_loss"] = logs.pop("mlm_loss")
        super().log(logs, start_time)


def _grads_bad(model: torch.nn.Module, grad_norm, device) -> torch.Tensor:
    """Whether a gradient is non-finite, as a device bool: from the step's norm, else one fused norm pass."""
    if isinstance(grad_norm, torch.Tensor):
        return ~torch.isfinite(grad_norm.detach())
    if isinstance(grad_norm, float):  # DeepSpeed reports a Python float
        return torch.tensor(not math.isfinite(grad_norm), device=device)
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.bool, device=device)
    norms = torch._foreach_norm(grads)
    return ~torch.stack([n.to(device) for n in norms]).isfinite().all()


def _attention(batch: dict) -> torch.Tensor:
    """Non-padding positions of a batch: its attention mask, or all ones."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"]
    return torch.ones_like(batch["input_ids"])
