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

from ..core.cli_utils import UserError
from ..core.cost import CostMeter
from ..core.errors import NonFiniteLossError
from ..core.losses import distillation_loss
from ..core.schedule import kd_is_active, kd_weight, teacher_indices
from ..core.teachers import check_teacher_vocab, freeze_teacher, release_teachers
from .data import VisionDataArguments, build_dataloaders, build_datasets
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
CHECKPOINT_PREFIX = "checkpoint-"


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

    def _global_count(self, local: int) -> int:
        if self.accelerator.num_processes == 1:
            return local
        t = torch.tensor(local, device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="sum").item())

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


class LossWindow:
    """Task/KD loss since the last evaluation, averaged over steps and summed over ranks at read time."""

    def __init__(self):
        self.sums, self.steps, self.kd_steps = None, 0, 0

    def add(self, r: StepResult) -> None:
        vals = torch.stack([r.ce, r.kd if r.kd is not None else torch.zeros_like(r.ce)])
        self.sums = vals if self.sums is None else self.sums + vals  # on device: no sync per step
        self.steps += 1
        self.kd_steps += r.kd is not None

    def finite(self, accelerator: Accelerator) -> bool:
        """All ranks' losses so far are finite (a reduce: every rank gets the same answer, none hangs)."""
        return self.sums is None or bool(torch.isfinite(accelerator.reduce(self.sums, reduction="sum")).all())

    def values(self, accelerator: Accelerator) -> dict:
        if not self.steps:
            return {"task_loss": None, "kd_loss": None}
        ce, kd = accelerator.reduce(self.sums, reduction="sum").tolist()
        out = {"task_loss": ce / self.steps, "kd_loss": kd / self.kd_steps if self.kd_steps else None}
        self.__init__()
        return out


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


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return max(ckpts, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):])) if ckpts else None


def check_output_dir(args: VisionTrainingArguments) -> Path | None:
    """Refuse to train into a non-empty output_dir (unless overwriting or resuming); resolve the resume path."""
    out, resume = Path(args.output_dir), args.resume_from_checkpoint
    if resume == "latest":
        path = find_latest_checkpoint(out)
        if path is None:
            raise UserError(f"--resume_from_checkpoint latest: no {CHECKPOINT_PREFIX}<step> folder in {str(out)!r}")
        return path
    if resume:
        if not Path(resume).is_dir():
            raise UserError(f"checkpoint {resume!r} is not a folder; expected {CHECKPOINT_PREFIX}<step> or 'latest'")
        return Path(resume)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite_output_dir:
        raise UserError(f"output_dir {str(out)!r} is not empty; pass --overwrite_output_dir or "
                        "--resume_from_checkpoint latest")
    return None


def _prepare_metrics_file(out: Path, resume_step: int | None) -> Path:
    """A fresh run starts an empty file; a resumed one drops lines past the checkpoint (they will be redone)."""
    path = out / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    keep = [r for r in rows if resume_step is not None and r.get("step", 0) <= resume_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
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
        self.resume_path = check_output_dir(args)
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
        self.acc.print(f"Resuming from {self.resume_path}")
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

    def _log_eval(self, step: int, window: LossWindow, metrics_path: Path) -> dict:
        result = evaluate(self.acc, self.model, self.val_dl, self.model_args.channels_last)
        self.meter.exclude(as_eval=True)
        active = bool(self.model_args.teacher_checkpoint)
        row = {"step": step, "epoch": round(step / self.spe, 4), **self.meter.log_values(), **result,
               "kd_weight": kd_weight(step - 1, self.args.kd_alpha, self.stop_step) if active else 0.0,
               **window.values(self.acc), "learning_rate": self.scheduler.get_last_lr()[0]}
        if row["task_loss"] is not None and not math.isfinite(row["task_loss"]):
            raise _diverged(step)
        if self.acc.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.acc.log({k: v for k, v in row.items() if v is not None}, step=step)
        self.acc.print(f"step {step}/{self.max_steps} epoch {row['epoch']:.2f}: top1 {row['top1']:.4f} "
                       f"top5 {row['top5']:.4f} gpu_hours {row['gpu_hours']:.5f}")
        return row

    def _save_checkpoint(self, step: int) -> None:
        self.state.step = step
        self.acc.save_state(str(Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}{step}"))

    def train(self) -> dict:
        """The training loop; returns the last evaluation's metrics row."""
        out = Path(self.args.output_dir)
        if self.acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            _prepare_metrics_file(out, self.state.step if self.resume_path else None)
        self.acc.wait_for_everyone()
        if self.args.report_to != "none":
            self.acc.init_trackers("resnet_kd", config=self.args.tracker_config())
        kd_step, window, row, step = self.kd_step, LossWindow(), {}, self.state.step
        logger.info("training %s on %s: %d steps (%d per epoch), KD stop step %d, %d teacher(s)",
                    self.model_args.model, self.data.source, self.max_steps, self.spe, self.stop_step,
                    len(kd_step.teachers))
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
                step += 1
                self.meter.step_done(result.num_images)
                window.add(result)
                if self._should_eval(step):
                    row = self._log_eval(step, window, out / METRICS_FILE)
                if self.args.checkpointing_steps and step % self.args.checkpointing_steps == 0:
                    if not window.finite(self.acc):  # never checkpoint diverged weights
                        raise _diverged(step)
                    self._save_checkpoint(step)
        self.state.step = step
        self._save_final()
        return row

    def _save_final(self) -> None:
        state_dict = self.acc.get_state_dict(self.model)
        if self.acc.is_main_process:
            save_model_dir(state_dict, self.args.output_dir, self.model_args.model, self.data.num_classes,
                           extra={"image_size": self.data.image_size, "data": self.data.source, "step": self.state.step})
        self.acc.wait_for_everyone()
        self.acc.end_training()


def run_vision_training(model_args: VisionModelArguments, data_args: VisionDataArguments,
                        args: VisionTrainingArguments) -> dict:
    """Train (and distil, when teachers are given) an image classifier; returns the last metrics row.

    Writes ``<output_dir>/metrics.jsonl`` (one line per evaluation), ``checkpoint-<step>/`` every
    ``--checkpointing_steps`` and the final ``model.safetensors`` + ``vision_model.json``.
    """
    return VisionRun(model_args, data_args, args).train()
