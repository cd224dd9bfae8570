"""Image-classification training with knowledge distillation, driven by Hugging Face ``accelerate``.

Offline on a CPU (digits; a baseline, then a student distilling from it for the first half)::

    python run_scripts/run_resnet_kd.py --model resnet18 --output_dir runs/digits_base --epochs 4
    python run_scripts/run_resnet_kd.py --model resnet18 --output_dir runs/digits_kd --epochs 4 \
        --teacher_checkpoint runs/digits_base --kd_alpha 0.5 --kd_stop_ratio 0.5

ImageNet on 8 GPUs: see ``docs/vision.md``. The loop follows accelerate's ``complete_cv_example.py``
(``prepare``, ``backward``, ``gather_for_metrics``, ``save_state``/``load_state``, ``skip_first_batches``); the KD
objective, cutoff, teacher choice and cost accounting are the shared ones (``losses``, ``schedule``, ``cost``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from ..core.atomic import write_text_atomic
from ..core.cli_utils import UserError
from ..core.cost import CostMeter
from ..core.errors import NonFiniteLossError
from ..core.hub import take_hub_settings
from ..core.log_terms import TermWindow
from ..core.losses import distillation_loss
from ..core.schedule import kd_is_active, teacher_indices
from ..core.teachers import check_teacher_vocab, freeze_teacher, release_teachers
from .card import METRIC_KEYS, push_run, write_card
from .checkpoints import check_output_dir, save_checkpoint
from .data import VisionDataArguments, build_dataloaders, build_datasets
from .progress import Progress, loss_window, window_values
from .setup import (
    VisionModelArguments,
    VisionTrainingArguments,
    build_lr_scheduler,
    build_model,
    build_optimizer,
    load_teachers,
    resolve_stop_step,
    save_model_dir,
)

logger = get_logger(__name__)  # main process only

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainState:
    """Loop position, saved in every checkpoint (``register_for_checkpointing``)."""

    step: int = 0
    steps_per_epoch: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.steps_per_epoch = int(state["step"]), int(state["steps_per_epoch"])


@dataclass
class StepResult:
    num_images: int  # this process's images in the step
    ce: torch.Tensor  # this process's share of the step's mean task loss (sums to the mean over ranks)
    kd: torch.Tensor | None
    loss: torch.Tensor | None = None  # this process's share of the weighted objective that was back-propagated


class KDStep:
    """One optimizer step over a list of micro-batches, with or without teachers.

    Each loss term is a sum over the step's images divided by the number of images in the whole step (all
    micro-batches, all ranks), so the update does not depend on how the global batch is split. DDP *averages*
    gradients over ranks, hence ``loss * num_processes``. Accumulation uses ``no_sync`` on all but the last
    micro-batch; accelerate's own accumulation is off (it would divide the loss by the accumulation steps again).
    """

    def __init__(self, accelerator: Accelerator, model, optimizer, scheduler, teachers=(), *, alpha: float = 0.9,
                 temperature: float = 4.0, divergence: str = "forward_kl", selection: str = "mean", seed: int = 0,
                 stop_step: int = 0, label_smoothing: float = 0.0, channels_last: bool = True):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.teachers = list(teachers)
        self.alpha, self.temperature, self.divergence = alpha, temperature, divergence
        self.selection, self.seed, self.stop_step = selection, seed, stop_step
        self.label_smoothing, self.channels_last = label_smoothing, channels_last

    def teacher_ids(self, step: int) -> list[int]:
        if not self.teachers or not kd_is_active(step, self.stop_step):
            return []
        return teacher_indices(step, len(self.teachers), self.selection, self.seed)

    def _global_count(self, local: int) -> int | torch.Tensor:
        if self.accelerator.num_processes == 1:
            return local
        # stays on the device: the loss divides by it there, and nothing reads it on the host
        return self.accelerator.reduce(torch.tensor(local, device=self.accelerator.device), reduction="sum")

    def __call__(self, micro_batches: list, step: int) -> StepResult:
        acc, ids = self.accelerator, self.teacher_ids(step)  # one teacher choice for all micro-batches
        local = sum(int(y.shape[0]) for _, y in micro_batches)
        denominator = self._global_count(local)
        ce_total, kd_total, loss_total = (torch.zeros((), device=acc.device) for _ in range(3))
        for i, (x, y) in enumerate(micro_batches):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                teacher_logits = None
                if ids:
                    with torch.no_grad(), acc.autocast():
                        teacher_logits = [self.teachers[j](x) for j in ids]
                out = distillation_loss(
                    self.model(x), y, teacher_logits, alpha=self.alpha, temperature=self.temperature,
                    divergence=self.divergence, ce_denominator=denominator, label_smoothing=self.label_smoothing)
                acc.backward(out.loss * acc.num_processes)
            ce_total += out.ce
            loss_total += out.loss.detach()
            if out.kd is not None:
                kd_total += out.kd
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(num_images=local, ce=ce_total, kd=kd_total if ids else None, loss=loss_total)


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader, channels_last: bool = True) -> dict:
    """Top-1/top-5 accuracy and mean CE; ``gather_for_metrics`` drops sharding's padding duplicates, so
    ``num_eval_images`` equals the validation split's size on any number of processes."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # top1, top5, loss, count
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit1, hit5 = (top[:, 0] == y).float(), (top == y[:, None]).any(-1).float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        hit1, hit5, loss = accelerator.gather_for_metrics((hit1, hit5, loss))
        totals += torch.stack([hit1.sum(), hit5.sum(), loss.sum(), hit1.new_tensor(hit1.numel())]).double()
    model.train()
    top1, top5, loss, n = totals.tolist()
    return {"top1": top1 / n, "top5": top5 / n, "eval_loss": loss / n, "num_eval_images": int(n)}


def _prepare_metrics_file(out: Path, resume_step: int | None) -> Path:
    """A fresh run starts an empty file; a resumed one drops lines past the checkpoint (they will be redone)."""
    path = out / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    keep = [r for r in rows if resume_step is not None and r.get("step", 0) <= resume_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))  # a crash here keeps the old rows
    return path


def _make_accelerator(args: VisionTrainingArguments) -> Accelerator:
    log_with = None if args.report_to == "none" else args.report_to
    acc = Accelerator(mixed_precision=args.mixed_precision, log_with=log_with, project_dir=args.output_dir,
                      gradient_accumulation_steps=1, step_scheduler_with_optimizer=False)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:  # e.g. torchrun on CPU without ACCELERATE_USE_CPU: N copies of one run
        raise UserError(f"{launched} processes were launched but accelerate runs {acc.num_processes} per run; on "
                        "CPU set ACCELERATE_USE_CPU=true (torchrun) so the processes form one gloo group")
    if acc.gradient_accumulation_steps != 1:
        raise UserError("gradient accumulation came from accelerate's config/flag; use this script's "
                        "--gradient_accumulation_steps instead (the loss is normalised per optimizer step)")
    return acc


def _diverged(step: int) -> NonFiniteLossError:
    return NonFiniteLossError(f"the training loss became NaN/inf before step {step}; lower --learning_rate or add "
                              "warmup (the last checkpoint-<step> stays valid)")


def _micro_batch_groups(loader, size: int):
    """Lists of ``size`` consecutive micro-batches (the last one may be shorter): one optimizer step each."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class VisionRun:
    """Everything one ``run_vision_training`` call builds; :meth:`train` runs the loop."""

    def __init__(self, model_args: VisionModelArguments, data_args: VisionDataArguments,
                 args: VisionTrainingArguments):
        self.model_args, self.data_args, self.args = model_args, data_args, args
        self.hub = take_hub_settings(args)  # the token leaves the arguments: never in a tracker config or a log
        self.resume_path = check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
        self.acc = acc = _make_accelerator(args)
        set_seed(args.seed, device_specific=True)  # rank 0 = the 1-process seed; DDP broadcasts its weights
        self.data = build_datasets(data_args)
        train_dl, val_dl = build_dataloaders(self.data, data_args, args.per_device_train_batch_size,
                                             args.per_device_eval_batch_size, seed=args.seed)
        self.sampler = train_dl.sampler
        model = build_model(model_args.model, self.data.num_classes, model_args.channels_last)
        optimizer = build_optimizer(model, args)
        self.model, self.optimizer, self.train_dl, self.val_dl = acc.prepare(model, optimizer, train_dl, val_dl)
        # Steps per epoch from the sharded (per-process) loader; the LR schedule needs them, so it comes after.
        self.spe = math.ceil(len(self.train_dl) / args.gradient_accumulation_steps)
        self.max_steps = args.max_steps or self.spe * args.resolved_epochs(data_args.uses_digits)
        self.scheduler = acc.prepare(build_lr_scheduler(optimizer, args, self.max_steps, self.spe))
        self.stop_step = resolve_stop_step(args, self.max_steps) if model_args.teacher_checkpoint else 0
        self.state, self.meter = TrainState(steps_per_epoch=self.spe), CostMeter(acc.num_processes, unit="images")
        acc.register_for_checkpointing(self.state, self.meter)
        self._restore()
        self.kd_step = self._kd_step()  # teachers load (and fail) before anything is written

    def _restore(self) -> None:
        if self.resume_path is None:
            return
        logger.info("resuming from %s", self.resume_path)
        self.acc.load_state(str(self.resume_path))
        if self.state.steps_per_epoch != self.spe:
            raise UserError(f"checkpoint has {self.state.steps_per_epoch} steps per epoch, this run {self.spe}: resume "
                            "with the same batch size, accumulation and number of processes")

    def _kd_step(self) -> KDStep:
        teachers = []
        if self.model_args.teacher_checkpoint and kd_is_active(self.state.step, self.stop_step):
            teachers, names = load_teachers(self.model_args, self.data.num_classes)
            check_teacher_vocab(self.model, teachers, names)
            teachers = [freeze_teacher(t, device=self.acc.device) for t in teachers]
            self.meter.watch_teachers(teachers)
        a = self.args
        return KDStep(self.acc, self.model, self.optimizer, self.scheduler, teachers, alpha=a.kd_alpha,
                      temperature=a.kd_temperature, divergence=a.kd_divergence, selection=a.kd_teacher_selection,
                      seed=a.seed, stop_step=self.stop_step, label_smoothing=a.label_smoothing,
                      channels_last=self.model_args.channels_last)

    def _epoch_loader(self, epoch: int, step: int):
        """This epoch's loader from global ``step`` on: on resume mid-epoch, batches already trained on are skipped."""
        self.sampler.set_epoch(epoch)  # reaches the shared sampler also through accelerate's wrappers
        self.train_dl.set_epoch(epoch)
        done = step - epoch * self.spe
        if done <= 0:
            return self.train_dl
        loader = self.acc.skip_first_batches(self.train_dl, done * self.args.gradient_accumulation_steps)
        loader.set_epoch(epoch)
        return loader

    def _should_eval(self, step: int) -> bool:
        every = self.args.eval_steps
        return step % self.spe == 0 or step == self.max_steps or bool(every and step % every == 0)

    @property
    def _kd_alpha(self) -> float:
        return self.args.kd_alpha if self.model_args.teacher_checkpoint else 0.0

    def _log_eval(self, step: int, window: TermWindow, metrics_path: Path) -> dict:
        result = evaluate(self.acc, self.model, self.val_dl, self.model_args.channels_last)
        self.meter.exclude(as_eval=True)
        row = {"step": step, "epoch": round(step / self.spe, 4), **self.meter.log_values(), **result,
               **window_values(window, self.acc, self._kd_alpha), "learning_rate": self.scheduler.get_last_lr()[0]}
        if row["task_loss"] is not None and not math.isfinite(row["task_loss"]):
            raise _diverged(step)
        if self.acc.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.acc.log({k: v for k, v in row.items() if v is not None}, step=step)
        logger.info("eval at step %d/%d (epoch %.2f): top1 %.4f, top5 %.4f, eval_loss %.4g, gpu_hours %.4g", step,
                    self.max_steps, row["epoch"], row["top1"], row["top5"], row["eval_loss"], row["gpu_hours"])
        return row

    def _save_checkpoint(self, step: int) -> None:
        self.state.step = step
        marker = {"steps_per_epoch": self.spe, "num_processes": self.acc.num_processes,
                  "gpu_hours": self.meter.gpu_hours}
        save_checkpoint(self.acc, self.args.output_dir, step, marker, self.args.save_total_limit)

    def train(self) -> dict:
        """The training loop; returns the last evaluation's metrics row."""
        out = Path(self.args.output_dir)
        if self.acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            _prepare_metrics_file(out, self.state.step if self.resume_path else None)
        self.acc.wait_for_everyone()
        if self.args.report_to != "none":
            self.acc.init_trackers("resnet_kd", config=self.args.tracker_config())
        logger.info("training %s on %s: %d steps (%d per epoch), KD stop step %d, %d teacher(s)",
                    self.model_args.model, self.data.source, self.max_steps, self.spe, self.stop_step,
                    len(self.kd_step.teachers))
        progress = Progress(self.acc, self.max_steps, self.state.step, self.spe, self.args.logging_steps,
                            disable=self.args.disable_tqdm, kd_alpha=self._kd_alpha)
        with progress.running():
            row = self._loop(progress, out / METRICS_FILE)
        self._save_final(row)
        return row

    def _loop(self, progress: Progress, metrics_path: Path) -> dict:
        kd_step, window, row, step = self.kd_step, loss_window(), {}, self.state.step
        self.meter.start()
        for epoch in range(step // self.spe, math.ceil(self.max_steps / self.spe)):
            # islice: stop at max_steps (possibly mid-epoch) without loading batches that will not be used.
            remaining = min((epoch + 1) * self.spe, self.max_steps) - step
            groups = _micro_batch_groups(self._epoch_loader(epoch, step), self.args.gradient_accumulation_steps)
            for micro_batches in itertools.islice(groups, max(0, remaining)):
                if kd_step.teachers and not kd_is_active(step, self.stop_step):
                    self.meter.unwatch_teachers()
                    release_teachers(kd_step.teachers)  # never called again: free their memory
                    kd_step.teachers = []
                result = kd_step(micro_batches, step)
                window.add(step, result.ce, result.kd, result.loss)
                progress.step_done(step, result)
                step += 1
                self.meter.step_done(result.num_images)
                evaluating = self._should_eval(step)
                if progress.should_log(step):  # an evaluation at this step reads (and resets) the cost window
                    self._log_train(progress, step, reset_cost_window=not evaluating)
                if evaluating:
                    row = self._log_eval(step, window, metrics_path)
                if self.args.checkpointing_steps and step % self.args.checkpointing_steps == 0:
                    if not window.finite(self.acc.num_processes, lambda t: self.acc.reduce(t, reduction="sum")):  # never checkpoint diverged weights
                        raise _diverged(step)
                    self._save_checkpoint(step)
        self.state.step = step
        return row

    def _log_train(self, progress: Progress, step: int, reset_cost_window: bool) -> None:
        cost = self.meter.log_values(reset_window=reset_cost_window)
        line = progress.log(step, self.scheduler.get_last_lr()[0], cost)
        if line["loss"] is not None and not math.isfinite(line["loss"]):
            raise _diverged(step)

    def card_facts(self, row: dict) -> dict:
        """The KD facts of this run for its model card (see ``hf_kd.vision.card``)."""
        a, kd = self.args, bool(self.model_args.teacher_checkpoint)
        facts = {
            "architecture": self.model_args.model, "num_classes": self.data.num_classes,
            "teachers": list(self.model_args.teacher_checkpoint), "kd_alpha": a.kd_alpha if kd else 0.0,
            # a baseline had no temperature, stop step, selection or divergence: None, not the flags' defaults
            "kd_temperature": a.kd_temperature if kd else None, "kd_stop_step": self.stop_step if kd else None,
            "kd_teacher_selection": a.kd_teacher_selection if kd else None,
            "kd_divergence": a.kd_divergence if kd else None,
            "training_data": self.data.source, "train_steps": self.state.step, "max_steps": self.max_steps,
            "global_batch_size": a.per_device_train_batch_size * a.gradient_accumulation_steps * self.acc.num_processes,
            "num_processes": self.acc.num_processes, "device": self.acc.device.type, "gpu_hours": self.meter.gpu_hours,
            "eval_gpu_hours": self.meter.eval_gpu_hours, "learning_rate": a.learning_rate,
            "label_smoothing": a.label_smoothing, "seed": a.seed,
        }
        return {**facts, **{k: row[k] for k in METRIC_KEYS if row.get(k) is not None}}

    def _save_final(self, row: dict) -> None:
        """``model.safetensors`` + ``config.json`` + the model card (and the upload with ``--push_to_hub``)."""
        state_dict = self.acc.get_state_dict(self.model)
        if self.acc.is_main_process:
            d = self.data
            save_model_dir(state_dict, self.args.output_dir, self.model_args.model, d.num_classes,
                           extra={"data": d.source, "step": self.state.step}, image_size=d.image_size,
                           mean=d.mean, std=d.std, label_names=d.label_names)
            repo_id = write_card(self.args.output_dir, self.card_facts(row), self.hub)
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if self.hub.push and self.acc.is_main_process:  # after the barrier: a failed upload cannot hang other ranks
            push_run(self.args.output_dir, repo_id, self.hub)


def run_vision_training(model_args: VisionModelArguments, data_args: VisionDataArguments,
                        args: VisionTrainingArguments) -> dict:
    """Train (and distil, when teachers are given) an image classifier; returns the last metrics row.

    Writes ``<output_dir>/metrics.jsonl`` (one line per evaluation), ``checkpoint-<step>/`` every
    ``--checkpointing_steps`` (staged and published atomically, the newest ``--save_total_limit`` kept) and the
    final ``model.safetensors`` + ``config.json`` + model card ``README.md``; uploads that folder with
    ``--push_to_hub``. Shows a progress bar and logs a training line every ``--logging_steps``.

    Example::

        from hf_kd.vision import VisionDataArguments, VisionModelArguments, VisionTrainingArguments, run_vision_training
        row = run_vision_training(VisionModelArguments(model="resnet18"), VisionDataArguments(),
                                  VisionTrainingArguments(output_dir="runs/digits", epochs=4, learning_rate=0.05))
        print(row["top1"])
    """
    return VisionRun(model_args, data_args, args).train()
