"""``DistillationTrainer``: MLM or causal-LM pretraining with KD from one or more teachers, a KD cutoff, and cost
accounting. The task is read from the model (:mod:`hf_kd.text.task`) and its loss is an objective object chosen
once (:mod:`hf_kd.text.objective`: MLM or causal LM); the teachers' side of the KD term comes from a teacher
source (:mod:`hf_kd.text.teacher_targets`).

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
window's KD steps only (``clm_loss`` instead of ``mlm_loss`` for causal LMs), and ``kd_weight`` the mean KD weight over the window (``kd_alpha`` x KD steps / steps:
``kd_alpha`` before the stop step, 0 after, a fraction on the window that straddles the stop).

Hot path: a micro-batch reads one value on the host, the number of its loss rows (a data-dependent shape:
one ``nonzero`` shared by student head, teacher heads and labels, :class:`~hf_kd.text.rows.Rows`;
``kd_positions='all'`` adds one for its KD rows). Token counts, logged terms and the non-finite flag are
summed on the device; the guard reads one fused flag per optimizer step (reusing the
gradient norm the Trainer computes anyway) and the logged values are read once per log line.

Private ``Trainer`` methods overridden here (transformers 5.x; the only places that depend on its internals):

| override | why |
|---|---|
| ``get_batch_samples`` | the step's loss-position counts, ours (causal LMs, KD positions), before the step's micro-batches run |
| ``_get_grad_norm`` | keeps the gradient norm the Trainer computes anyway, so the non-finite guard needs no second pass |
| ``_load_callback_state`` | ``--restore_callback_states_from_checkpoint`` would replace our ``CostCallback`` (and its teacher hooks) |
| ``_get_output_dir`` | points the Trainer's own checkpoint writer at the staging folder while a checkpoint is saved |
| ``_save_checkpoint`` | writes every checkpoint staged and publishes it by one rename (a killed save leaves nothing resumable) |
| ``_push_from_checkpoint`` | an async Hub upload must read the published folder, not the staging one |
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import Trainer

from ..core.callbacks import CostCallback, PreOptimizerStepHook, TrainBeginHook
from ..core.checkpointing import StagedCheckpoint, latest_complete_checkpoint
from ..core.cost import cache_share_gpu_hours
from ..core.distributed import deepspeed_stage, prepare_teachers
from ..core.errors import NonFiniteLossError
from ..core.log_terms import TermWindow
from ..core.schedule import kd_is_active, resolve_kd_stop_step
from ..core.teachers import (
    check_teacher_tokenizers,
    check_teacher_vocab,
    freeze_teacher,
    tokenizer_source,
)
from .cached_teachers import CachedTeachers, check_fields, fields_known_to_trainer, open_teacher_cache
from .clm_objective import CLMObjective
from .config import DistillationTrainingArguments
from .mlm_objective import MLMObjective
from .objective import LossSettings, MicroBatch, Objective, StepCounts, attention
from .sparse_head import SparseHead
from .task import check_teachers_fit, resolve_kd_task
from .teacher_loading import TeacherSpec, load_teachers, teacher_dtype, teacher_items
from .teacher_targets import LiveTeachers

logger = logging.getLogger(__name__)

class DistillationTrainer(Trainer):
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
        self.teacher_cache = open_teacher_cache(args, teacher_model)
        if self.teacher_cache is not None:  # no teacher is loaded: the cache's manifest says which it stores
            check_fields(self.teacher_cache, fields_known_to_trainer(args, model, self.kd_task))  # before any write
            teachers, self.teacher_names = [], self.teacher_cache.manifest.teacher_names or [args.kd_teacher_cache]
        else:
            teachers, self.teacher_names = load_teachers(teacher_model, args, self.kd_task)
            check_teacher_vocab(model, teachers, self.teacher_names)
            check_teacher_tokenizers(kwargs.get("processing_class"),
                                     [tokenizer_source(i) for i in teacher_items(teacher_model, args)],
                                     self.teacher_names, trust_remote_code=args.teacher_trust_remote_code)
            check_teachers_fit(self.kd_task, teachers, self.teacher_names)
        if args.kd_teacher_selection == "sample" and not self.teacher_names:
            # 'mean' is the default, so 'sample' was asked for explicitly: without a teacher it would be ignored.
            raise ValueError("kd_teacher_selection='sample' needs at least one teacher (--teacher_model_name_or_path); "
                             "expected a teacher, or drop the flag for a no-KD baseline")
        if args.kd_teacher_selection == "sample" and len(teachers) == 1:
            logger.info("kd_teacher_selection='sample' with one teacher: that teacher is used at every KD step")
        super().__init__(model=model, args=args, **kwargs)
        # Count labelled tokens for every model, so num_items_in_batch always reaches compute_loss.
        self.model_accepts_loss_kwargs = True
        self.cost_callback = CostCallback(teachers=teachers, unit="tokens")
        self.callback_handler.callbacks.insert(0, self.cost_callback)  # before reporters, so they see the keys
        self.add_callback(PreOptimizerStepHook(self._guard_optimizer_step))
        self.add_callback(TrainBeginHook(self._place_teachers))
        for t in teachers:
            freeze_teacher(t)
        self.objective: Objective = self._build_objective(teachers)
        del teachers  # the teacher source holds the only references (it frees them at the KD stop)
        self._kd_count: torch.Tensor | None = None
        self._terms = TermWindow(self.objective.log_key)
        self._nonfinite_flags: torch.Tensor | None = None  # [count, last value] of non-finite losses this step
        self._step_grad_norm = None  # the Trainer's gradient norm of the step being taken (see _get_grad_norm)

    def _build_objective(self, teachers: list[torch.nn.Module]) -> Objective:
        """The task's objective, with the live teachers as its source of KD targets."""
        deepspeed = self.is_deepspeed_enabled
        if self.teacher_cache is not None:
            source = CachedTeachers(self.teacher_cache, self.accelerator.process_index, self.args.device,
                                    self.args.kd_teacher_selection, self.args.seed)
            settings = LossSettings.from_args(self.args, source.missing_mass)
        else:
            source = LiveTeachers(teachers, [], self.args.kd_teacher_selection, self.args.seed, deepspeed)
            settings = LossSettings.from_args(self.args)
        if self.kd_task == "clm":
            sharded = deepspeed and deepspeed_stage(self.accelerator) == 3
            return CLMObjective(self.model, source, settings, self.args.clm_chunk_size, sharded)
        sparse = self.args.sparse_mlm_head
        if isinstance(source, LiveTeachers):
            source.readers[:] = MLMObjective.teacher_readers(teachers, sparse)
        return MLMObjective(source, settings, SparseHead.attach(self.model) if sparse else None)

    @property
    def teachers(self) -> list[torch.nn.Module]:
        """The teachers as they are called (a ZeRO-3 teacher is its engine); empty once freed at the KD stop."""
        return self.objective.teachers.modules

    @property
    def teachers_released(self) -> bool:
        return self.objective.teachers.released

    @property
    def teacher_calls(self) -> list[tuple[int, int]]:
        """The most recent (global_step, teacher index) pairs, one per teacher forward (bounded: audits, tests)."""
        return list(self.objective.teachers.calls)

    @property
    def teacher_cache_gpu_hours(self) -> float:
        """This run's share of the teacher cache's production pass so far (0 without a cache; ``docs/design.md``)."""
        if self.teacher_cache is None or self.args.kd_alpha == 0:
            return 0.0
        m = self.teacher_cache.manifest
        read = min(self.state.global_step, self.kd_stop_step)
        return cache_share_gpu_hours(m.device_hours, m.steps, read, self.args.kd_teacher_cache_readers)

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
    def _place_teachers(self, state) -> None:
        """At train begin (a resumed run's step is known): place the teachers on the training device if a step
        still needs them, else free them without ever placing them (a run resumed past the KD stop)."""
        source = self.objective.teachers
        if self.teacher_cache is not None and self.args.kd_alpha > 0:  # max_steps is known now, epochs too
            check_fields(self.teacher_cache, {}, self.kd_stop_step)
        if source.released or not source.modules:
            return
        if not self.kd_active(state.global_step):
            self.objective.release_teachers()
            return
        source.modules[:] = prepare_teachers(source.modules, self.accelerator, self.args, teacher_dtype(self.args))
        for t in source.modules:
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
        return bool(self.teacher_names) and self.args.kd_alpha > 0 and kd_is_active(step, self.kd_stop_step)

    # -- step-level counts ------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # A device tensor, read by the cost meter at logging time only (no host sync per step).
        self.cost_callback.add_items(torch.as_tensor(sum(attention(b).sum() for b in batch_samples), device=device))
        counts: StepCounts = self.objective.step_counts(batch_samples, device, self.kd_active(), self._gather_count)
        self._kd_count = counts.kd
        return batch_samples, num_items if counts.ce is None else counts.ce

    def _gather_count(self, count: torch.Tensor) -> torch.Tensor:
        """A step count summed over ranks when the loss is normalised by the global count."""
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            return self.accelerator.gather(count.reshape(1)).sum()
        return count

    # -- the loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self.objective.eval_loss(model, dict(inputs), return_outputs)
        step = self.state.global_step
        active = self.kd_active(step)
        if not active and self.teacher_names and not self.teachers_released:
            self.objective.release_teachers()
        out, outputs = self.objective.train_loss(model, MicroBatch(dict(inputs), step, active, num_items_in_batch,
                                                                   self._kd_count if active else None))
        self._terms.add(step, out.ce, out.kd)
        loss = self._check_finite(out.loss)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # ranks' gradients are averaged; the count is global
        return (loss, outputs) if return_outputs else loss

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
        """The Trainer's own save, redirected into a staging folder by ``_get_output_dir``; every rank writes its
        part (weights, optimizer shards, ``rng_state_<rank>.pth``) there, and the saving process publishes it once
        all are done, fixing ``best_model_checkpoint`` (recorded with the staging path) and rotating old ones."""
        stage = StagedCheckpoint(Path(super()._get_output_dir(trial)), self.state.global_step)
        if self.args.should_save:
            stage.clear_leftovers()
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(stage.root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint == str(stage.staged):
                self.state.best_model_checkpoint = str(stage.final)
                self.state.save_to_json(str(stage.staged / "trainer_state.json"))
            stage.publish(self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(stage.final))  # deferred: an async upload must not read the staging path

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_dir is None:  # an async upload must not read the staging folder; pushed once published
            super()._push_from_checkpoint(checkpoint_folder)

    # -- logging ----------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training line: add the two unweighted terms and the KD weight of its window
            alpha = self.args.kd_alpha if self.teacher_names else 0.0
            logs.update(self._terms.read(alpha, self.args.device, self.args.world_size,
                                         self.args.average_tokens_across_devices,
                                         lambda t: self.accelerator.reduce(t, reduction="sum")))
            calls = self.objective.teachers.calls
            if self.args.kd_teacher_selection == "sample" and calls and calls[-1][0] == self.state.global_step - 1:
                logs["kd_teacher"] = calls[-1][1]  # the teacher of the step just done (audits)
            if self.teacher_cache is not None:
                logs["teacher_cache_gpu_hours"] = self.teacher_cache_gpu_hours
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

