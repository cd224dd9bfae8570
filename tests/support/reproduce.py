"""A text back end for ``hf-kd reproduce`` tests that records what it trains, and can stop a run mid-way."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import transformers

from hf_kd.reproduce.presets import MLM_TINY
from hf_kd.reproduce.text import TextBackend

# A protocol small enough for a unit test (seconds per run on one CPU thread).
TINY = replace(MLM_TINY, vocab_size=200, max_seq_length=32, batch_size=4, steps=8, eval_every=2,
               good_teacher_steps=6, second_teacher_steps=4, poor_teacher_steps=2, frontier=(0.5,))


class Interrupt(transformers.TrainerCallback):
    """Ctrl-C after optimizer step ``step`` of the runs whose folder name starts with ``run``."""

    def __init__(self, run: str, step: int):
        self.run, self.step = run, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and Path(args.output_dir).name.startswith(self.run):
            raise KeyboardInterrupt


class SpyBackend(TextBackend):
    """Records each training (``trained``: run folder names; ``weights``: final student weights by folder name;
    ``resumed``: the checkpoint each one resumed from) and the model class of every trainer it builds."""

    def __init__(self, *args, interrupt: Interrupt | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupt = interrupt
        self.trained: list[str] = []
        self.resumed: list[str | None] = []
        self.weights: dict[str, dict] = {}
        self.models: list[str] = []
        self.report_tos: list[list[str]] = []

    def trainer(self, out, *args, **kwargs):
        trainer = super().trainer(out, *args, **kwargs)
        self.models.append(type(trainer.model).__name__)
        self.report_tos.append(trainer.args.report_to)
        if self.interrupt is not None:
            trainer.add_callback(self.interrupt)
        real_train = trainer.train

        def train(resume_from_checkpoint=None, **k):
            self.resumed.append(resume_from_checkpoint)
            return real_train(resume_from_checkpoint=resume_from_checkpoint, **k)

        trainer.train = train
        return trainer

    def train_one(self, out, *args, **kwargs):
        self.trained.append(Path(out).name)
        trainer = super().train_one(out, *args, **kwargs)
        self.weights[Path(out).name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return trainer


def synthetic_run(variant, losses, hours_per_step=1.0, steps_per_eval=10, role="student", seed=0, teachers=(),
                  stop=None, forwards=0):
    """A finished run's record with eval losses ``losses`` every ``steps_per_eval`` steps (report math tests)."""
    from hf_kd.reproduce.protocol import RunRecord

    log = []
    for i, loss in enumerate(losses, start=1):
        step = i * steps_per_eval
        log.append({"loss": loss, "gpu_hours": step * hours_per_step, "step": step})
        log.append({"eval_loss": loss, "eval_accuracy": 1 / loss, "gpu_hours": step * hours_per_step, "step": step})
    return RunRecord(variant=variant, role=role, seed=seed, steps=len(losses) * steps_per_eval, run_dir="",
                     teachers=list(teachers), kd_stop_ratio=stop, selection="mean", teacher_forwards=forwards,
                     log_history=log)
