"""The vision back end of ``hf-kd reproduce --task vision``: the ResNet loop on scikit-learn digits.

    hf-kd reproduce --task vision          # resnet18 teachers and students on scikit-learn digits, CPU

The same protocol, jobs, calibration and verdicts as the text tasks (``run.run_protocol``): teachers (good: 3x
the students' budget, second: 2x, poor: a quarter) trained once and cached, finished runs reused, half-finished
ones resumed from their newest complete checkpoint. Quality = top-1 on the fixed validation split (higher is
better); cost = GPU-hours measured, and the calibrated cost the verdicts use.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.checkpointing import latest_complete_checkpoint
from ..core.schedule import teachers_per_step
from ..text.data import cache_root
from ..vision.checkpoints import STATE_MARKER
from ..vision.data import VisionDataArguments
from ..vision.loop import KDStep, VisionRun
from ..vision.setup import VisionModelArguments, VisionTrainingArguments, build_model
from .calibrate import teachers_per_kind, time_step_kinds
from .presets import VisionPreset
from .protocol import (
    Calibration,
    Job,
    RunOutcome,
    TeacherRecord,
    Variant,
    cache_folder,
    cached_teacher,
    peek_cached_teacher,
    teacher_steps,
)

DATA_NAME = "scikit-learn digits (vision)"
TEACHER_KEY_FIELDS = ("model", "batch_size", "learning_rate", "warmup_steps")


def _reset_accelerate() -> None:
    """Many runs in one process: each starts from a fresh accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class VisionBackend:
    """:class:`~hf_kd.reproduce.protocol.TaskBackend` for image classification with the vision loop."""

    task = "vision"
    data_name = DATA_NAME

    def __init__(self, preset: VisionPreset):
        self.preset = preset
        self.key = {"preset": asdict(preset), "data": "digits"}

    def for_workers(self, folder: Path) -> VisionBackend:
        return self  # the digits load in a moment in every worker

    def _args(self, out: Path, steps: int, seed: int, v: Variant | None, save_every: int | None = None,
              resume: str | None = None) -> VisionTrainingArguments:
        p = self.preset
        return VisionTrainingArguments(
            output_dir=str(out), overwrite_output_dir=resume is None, seed=seed, max_steps=steps,
            per_device_train_batch_size=p.batch_size, learning_rate=p.learning_rate, warmup_steps=p.warmup_steps,
            eval_steps=p.eval_every, kd_alpha=p.kd_alpha, kd_temperature=p.kd_temperature,
            kd_stop_ratio=v.kd_stop_ratio if v else None, kd_teacher_selection=v.selection if v else "mean",
            checkpointing_steps=save_every, save_total_limit=1 if save_every else None, resume_from_checkpoint=resume,
            disable_tqdm=True)

    def _train(self, out: Path, steps: int, seed: int, teacher_dirs: list[str], v: Variant | None,
               save_every: int | None = None) -> RunOutcome:
        resume = "latest" if save_every and self.has_checkpoint(out) else None
        run = VisionRun(VisionModelArguments(model=self.preset.model, teacher_checkpoint=list(teacher_dirs)),
                        VisionDataArguments(), self._args(out, steps, seed, v, save_every, resume))
        # Forwards before a resumed run's checkpoint were made by another process: one per teacher run per
        # micro-batch of every KD step (all teachers with ``mean``, one with ``sample``).
        per_step = teachers_per_step(len(teacher_dirs), v.selection if v else "mean")
        calls = [min(run.state.step, run.stop_step) * per_step * run.args.gradient_accumulation_steps if resume else 0]
        for t in run.kd_step.teachers:
            t.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        self.watch(run)
        try:
            run.train()
        finally:
            _reset_accelerate()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return RunOutcome(calls[0], rows)

    def watch(self, run: VisionRun) -> None:
        """Called with each run before it trains (a seam for tests that follow or stop a run)."""

    def train(self, job: Job, teachers: list[str], save_every: int | None, progress: bool) -> RunOutcome:
        return self._train(Path(job.run_dir), job.steps, job.seed, teachers, job.variant, save_every)

    def has_checkpoint(self, run_dir: Path) -> bool:
        return latest_complete_checkpoint(run_dir, state_file=STATE_MARKER) is not None

    def _teacher_folder(self, name: str) -> Path:
        steps, seed = teacher_steps(self.preset)[name]
        shape = {k: getattr(self.preset, k) for k in TEACHER_KEY_FIELDS}
        return cache_folder(cache_root(), "vision_teachers", name, [shape, steps, seed, "digits"])

    def teacher_steps_to_train(self, name: str) -> int:
        return 0 if self.peek_teacher(name) else teacher_steps(self.preset)[name][0]

    def peek_teacher(self, name: str) -> TeacherRecord | None:
        return peek_cached_teacher(self._teacher_folder(name))

    def ensure_teacher(self, name: str, progress: bool) -> TeacherRecord:
        """Train a digits teacher once and cache its run folder (usable as ``--teacher_checkpoint``)."""
        steps, seed = teacher_steps(self.preset)[name]

        def train(folder: Path) -> dict:
            last = self._train(folder, steps, seed, [], None).log_history[-1]
            return {"steps": steps, "seed": seed, "gpu_hours": last["gpu_hours"], "final_quality": last["top1"]}

        return cached_teacher(self._teacher_folder(name), name, train)

    def teacher_eval_every(self, steps: int) -> int:
        return self.preset.eval_every

    def measure_step_costs(self, kinds: list[str], rounds: int = 5, steps_per_round: int = 3,
                           workers: int = 1) -> Calibration:  # vision runs one worker: none beside it
        """Per-step costs of the loop's own KD step; teachers are the preset's model (the size they are trained at)."""
        with tempfile.TemporaryDirectory() as tmp:
            run = VisionRun(VisionModelArguments(model=self.preset.model), VisionDataArguments(),
                            self._args(Path(tmp), 1000, 0, None))
            try:
                names = teachers_per_kind(kinds)
                teachers = {n: build_model(self.preset.model, run.data.num_classes).to(run.acc.device).eval()
                            for n in {t for ts in names.values() for t in ts}}
                batches = [[(x.to(run.acc.device), y.to(run.acc.device))] for x, y in
                           (b for _, b in zip(range(4), run.train_dl))]
                model = copy.deepcopy(run.model)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

                def stepper(kind: str):
                    # a post-cutoff step has released its teachers: a step without any
                    ts = [] if kind == "post" else [teachers[n] for n in names[kind]]
                    step = KDStep(run.acc, model, optimizer, scheduler, ts, alpha=self.preset.kd_alpha,
                                  temperature=self.preset.kd_temperature, stop_step=10**9)
                    return lambda micro_batches: step(micro_batches, 0)

                params = {k: sum(p.numel() for n in (() if k == "post" else names[k]) for p in teachers[n].parameters())
                          for k in kinds}
                return time_step_kinds({k: stepper(k) for k in kinds}, batches, kinds, params, rounds, steps_per_round)
            finally:
                _reset_accelerate()

    def results_extra(self) -> dict:
        return {}
