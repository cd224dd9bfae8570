"""The text back end of ``hf-kd reproduce`` (``--task mlm`` and ``--task clm``): every run through the scripts' path.

Data, tokenizer, students, collator, teachers and trainer come from :mod:`hf_kd.text.pretrain` -- the factory
``run_mlm_kd.py`` and ``run_clm_kd.py`` use -- so a reproduce run *is* a script run with the flags
:func:`training_args` and :meth:`TextBackend.model_args` / :meth:`TextBackend.data_args` spell out: masks from
``ResumableMLMCollator`` (a function of seed and batch, so a resumed run is bit-exact), teachers loaded by
``core.teachers.load_pretrained`` from their saved folders. Evaluation uses that same collator: every evaluation of
a run scores the same masked positions, and so do all variants of one seed (speed-ups are paired per seed).
Quality = the trainer's ``eval_loss`` (held-out masked-token or next-token loss).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers

from ..core.checkpointing import latest_complete_checkpoint
from ..core.teachers import load_pretrained
from ..text.config import DistillationTrainingArguments
from ..text.data import cache_root
from ..text.pretrain import mlm_accuracy, next_token_accuracy, text_collator, trainer_for_data
from ..text.script_args import DataArguments, ModelArguments
from ..text.trainer import DistillationTrainer
from . import text_outputs
from .calibrate import running_in_background, teachers_per_kind, time_step_kinds
from .corpus import BUILTIN_NAME, Corpus, load_corpus, load_saved_corpus, save_corpus, unigram_entropy
from .glue import save_final_model
from .presets import TextPreset
from .protocol import (
    CacheSpec,
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

logger = logging.getLogger(__name__)

TEACHER_KEY_FIELDS = ("model_preset", "vocab_size", "max_seq_length", "batch_size", "learning_rate", "warmup_ratio",
                      "mlm_probability")


def training_args(p: TextPreset, out: Path, steps: int, seed: int, v: Variant | None = None,
                  report_progress: bool = True, save_every: int | None = None,
                  report_to: str = "none", kd_teacher_cache: str | None = None) -> DistillationTrainingArguments:
    """The run's flags (each one is a ``run_mlm_kd.py`` / ``run_clm_kd.py`` flag of the same name)."""
    return DistillationTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=64, learning_rate=_learning_rate(p, v), warmup_steps=p.warmup_ratio,
        lr_scheduler_type="linear", weight_decay=0.01, seed=seed,
        data_seed=seed if p.data_seed is None else p.data_seed, eval_strategy="steps",
        eval_steps=p.eval_every, logging_steps=p.eval_every, report_to=report_to,
        # Checkpoints let an interrupted run resume (hf-kd reproduce reruns pick them up); one is kept.
        save_strategy="steps" if save_every else "no", save_steps=save_every or 500, save_total_limit=1,
        use_cpu=not torch.cuda.is_available(), bf16=p.bf16 and torch.cuda.is_available(),
        disable_tqdm=not report_progress, dataloader_num_workers=0, kd_task=p.task,
        kd_alpha=p.kd_alpha, kd_temperature=p.kd_temperature, kd_positions=p.kd_positions,
        kd_stop_ratio=v.kd_stop_ratio if v else None, kd_teacher_selection=v.selection if v else "mean",
        kd_teacher_cache=kd_teacher_cache, overwrite_output_dir=True)


def _learning_rate(p: TextPreset, v: Variant | None) -> float:
    """A KD student's rate is ``kd_learning_rate`` when set; baselines and teachers keep ``learning_rate``."""
    return p.kd_learning_rate if v is not None and v.teachers and p.kd_learning_rate is not None else p.learning_rate


def preset_key(p: TextPreset) -> dict:
    """The preset as part of every run's key; ``task`` only when not MLM, so MLM runs made before it existed
    are still recognised as finished."""
    d = asdict(p)
    if d["task"] == "mlm":
        del d["task"]
    return d


class TextBackend:
    """:class:`~hf_kd.reproduce.protocol.TaskBackend` for masked and causal LMs (``preset.task``)."""

    keep_models = False  # save each run's final model (``--glue`` fine-tunes them: :mod:`.glue`)

    def __init__(self, preset: TextPreset, corpus_path: str | None = None, report_to: str = "none",
                 corpus: Corpus | None = None, corpus_dir: str | None = None):
        self.preset, self.task, self.corpus_path, self.report_to = preset, preset.task, corpus_path, report_to
        self.corpus_dir = corpus_dir
        self._corpus = corpus
        if corpus is None and corpus_dir is None:
            self._corpus = load_corpus(self.model_args(), self.data_args(), self.args(Path(tempfile.gettempdir()), 1, 0),
                                       self._data_name())
        self.data_name = self.corpus.name
        self.key = {"preset": preset_key(preset), "corpus": self.corpus.fingerprint}

    # -- the run as script arguments -------------------------------------------------------------------------
    def model_args(self) -> ModelArguments:
        p = self.preset
        return ModelArguments(model_preset=p.model_preset, vocab_size=p.vocab_size, tokenizer_name=p.tokenizer_name)

    def data_args(self) -> DataArguments:
        p = self.preset
        if p.dataset_name and not self.corpus_path:
            source = {"dataset_name": p.dataset_name, "dataset_config_name": p.dataset_config_name,
                      "streaming": p.streaming}
        else:
            source = {"train_file": self.corpus_path} if self.corpus_path else {}
        return DataArguments(max_seq_length=p.max_seq_length, mlm_probability=p.mlm_probability,
                             max_eval_samples=p.max_eval_samples, **source)

    def args(self, out: Path, steps: int, seed: int, v: Variant | None = None, progress: bool = False,
             save_every: int | None = None, report_to: str = "none", eval_every: int | None = None,
             kd_teacher_cache: str | None = None) -> DistillationTrainingArguments:
        p = replace(self.preset, eval_every=eval_every) if eval_every else self.preset
        return training_args(p, out, steps, seed, v, progress, save_every, report_to, kd_teacher_cache)

    def _data_name(self) -> str:
        p = self.preset
        return self.corpus_path or (f"{p.dataset_name} (streaming)" if p.dataset_name else BUILTIN_NAME)

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:  # a worker process: the parent saved it once
            self._corpus = load_saved_corpus(Path(self.corpus_dir))
        return self._corpus

    def __getstate__(self) -> dict:  # workers reload the saved corpus rather than unpickling datasets
        return {**self.__dict__, "_corpus": None if self.corpus_dir else self._corpus}

    def for_workers(self, folder: Path) -> TextBackend:
        save_corpus(self.corpus, folder)
        backend = TextBackend(self.preset, self.corpus_path, self.report_to, corpus=self.corpus, corpus_dir=str(folder))
        backend.keep_models = self.keep_models
        return backend

    # -- trainings --------------------------------------------------------------------------------------------
    def trainer(self, out: Path, steps: int, seed: int, teachers: list[str] | list[torch.nn.Module] = (),
                v: Variant | None = None, progress: bool = False, save_every: int | None = None,
                report_to: str = "none", student: torch.nn.Module | None = None,
                eval_every: int | None = None, kd_teacher_cache: str | None = None) -> DistillationTrainer:
        """A ready trainer for one run: the scripts' factory with this run's arguments and teachers (or cache)."""
        args = self.args(out, steps, seed, v, progress, save_every, report_to, eval_every, kd_teacher_cache)
        return self.trainer_for_args(args, teachers, student)

    def trainer_for_args(self, args: DistillationTrainingArguments, teachers=(),
                         student: torch.nn.Module | None = None) -> DistillationTrainer:
        trainer = trainer_for_data(self.model_args(), self.data_args(), args, self.corpus.data,
                                   teacher_model=list(teachers) or None, task=self.task, student=student)
        if args.disable_tqdm:  # no progress bar wanted: no per-log dict printed either (parallel workers stay quiet)
            trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        return trainer

    def train_one(self, out: Path, steps: int, seed: int, teachers: list[str] = (), v: Variant | None = None,
                  progress: bool = False, save_every: int | None = None, report_to: str = "none",
                  eval_every: int | None = None, kd_teacher_cache: str | None = None) -> DistillationTrainer:
        """Train a student (or teacher: no ``teachers``) from a fresh ``seed`` init; returns the finished trainer.

        With ``save_every``, checkpoints are written and a complete one already in ``out`` is resumed from. With
        ``kd_teacher_cache``, KD targets are read from that cache (checked against the run first), ``teachers``
        only compared with the cache's.
        """
        cached = kd_teacher_cache is not None
        trainer = self.trainer(out, steps, seed, [] if cached else teachers, v, progress, save_every, report_to,
                               eval_every=eval_every, kd_teacher_cache=kd_teacher_cache)
        if cached:
            text_outputs.check_for_run(self, trainer, list(teachers))
        resume = latest_complete_checkpoint(out) if save_every else None
        if resume:
            logger.info("resuming %s from %s", out.name, resume)
        trainer.train(resume_from_checkpoint=resume)
        if not any(e.get("step") == steps and "eval_loss" in e for e in trainer.state.log_history):
            trainer.evaluate()  # the final point of every curve is an evaluation
        trainer.save_state()
        return trainer

    def train(self, job: Job, teachers: list[str], save_every: int | None, progress: bool) -> RunOutcome:
        tr = self.train_one(Path(job.run_dir), job.steps, job.seed, teachers, job.variant, progress=progress,
                            save_every=save_every, report_to=self.report_to,
                            kd_teacher_cache=job.cache.folder if job.cache else None)
        if self.keep_models:
            save_final_model(tr)
        return RunOutcome(tr.teacher_forwards, tr.state.log_history)

    def ensure_teacher_outputs(self, spec: CacheSpec, teachers: list[TeacherRecord], progress: bool) -> TeacherRecord:
        return text_outputs.produce(self, spec, teachers)

    def has_checkpoint(self, run_dir: Path) -> bool:
        return latest_complete_checkpoint(run_dir) is not None

    # -- teachers ---------------------------------------------------------------------------------------------
    def teacher_key(self, name: str) -> list:
        # Only what shapes the teacher goes into the key, so tuning the students' KD knobs reuses it.
        steps, seed = teacher_steps(self.preset)[name]
        return [{k: getattr(self.preset, k) for k in TEACHER_KEY_FIELDS}, steps, seed, self.corpus.fingerprint]

    def teacher_folder(self, name: str) -> Path:
        # causal-LM teachers are kept apart from the MLM ones
        kind = "clm_teachers" if self.task == "clm" else "teachers"
        return cache_folder(cache_root(), kind, name, self.teacher_key(name))

    def teacher_steps_to_train(self, name: str) -> int:
        if self.preset.recycled_teacher and name == "good":
            return 0
        return 0 if (self.teacher_folder(name) / "teacher.json").is_file() else teacher_steps(self.preset)[name][0]

    def peek_teacher(self, name: str) -> TeacherRecord | None:
        if self.preset.recycled_teacher and name == "good":
            return None  # its record holds its quality on this corpus: an evaluation away
        return peek_cached_teacher(self.teacher_folder(name))

    def ensure_teacher(self, name: str, progress: bool) -> TeacherRecord:
        """Train a text teacher once, cached by (what shapes it, corpus); or evaluate the preset's recycled one."""
        p = self.preset
        if p.recycled_teacher and name == "good":
            return TeacherRecord(p.recycled_teacher, self.recycled_teacher_meta())
        steps, seed = teacher_steps(p)[name]

        def train(folder: Path) -> dict:
            trainer = self.train_one(folder, steps, seed, progress=progress, eval_every=self.teacher_eval_every(steps))
            trainer.save_model()
            return {"steps": steps, "seed": seed, "gpu_hours": trainer.cost_callback.meter.gpu_hours,
                    "final_quality": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][-1]}

        return cached_teacher(self.teacher_folder(name), name, train)

    def teacher_eval_every(self, steps: int) -> int:
        return max(self.preset.eval_every, steps // 6)  # a teacher's curve is not plotted: ~6 points suffice

    def _auto_class(self):
        return transformers.AutoModelForCausalLM if self.task == "clm" else transformers.AutoModelForMaskedLM

    def recycled_teacher_meta(self) -> dict:
        """A pretrained teacher's quality on this validation set (its training cost is sunk: not ours)."""
        p = self.preset
        model = load_pretrained(p.recycled_teacher, self._auto_class())
        with tempfile.TemporaryDirectory() as tmp:
            args = self.args(Path(tmp), 1, 0)
            trainer = DistillationTrainer(
                model=model, args=args, eval_dataset=self.corpus.val, processing_class=self.corpus.tokenizer,
                data_collator=text_collator(self.task, self.corpus.tokenizer, self.data_args(), args),
                compute_metrics=next_token_accuracy if self.task == "clm" else mlm_accuracy)
            metrics = trainer.evaluate()
        return {"steps": "recycled", "seed": None, "gpu_hours": 0.0, "source": p.recycled_teacher,
                "final_quality": metrics["eval_loss"], "final_accuracy": metrics.get("eval_accuracy")}

    # -- calibration ------------------------------------------------------------------------------------------
    def teacher_config(self, name: str, student: torch.nn.Module) -> transformers.PretrainedConfig:
        """The config teacher ``name`` has: a recycled one's own, else the student's (teachers are trained at the
        preset's size)."""
        if self.preset.recycled_teacher and name == "good":
            return transformers.AutoConfig.from_pretrained(self.preset.recycled_teacher)
        return student.config

    def measure_step_costs(self, kinds: list[str], rounds: int = 5, steps_per_round: int = 3,
                           workers: int = 1) -> Calibration:
        """Per-step costs with teachers of the real teachers' configs (random weights: a forward costs the same
        whatever the weights are), so a KD step is charged what the run pays for its teacher forwards."""
        with tempfile.TemporaryDirectory() as tmp:
            transformers.set_seed(0)
            probe = self.trainer(Path(tmp) / "probe", 1, 0)
            student = probe.model
            names = teachers_per_kind(kinds)
            configs = {n: self.teacher_config(n, student) for n in {t for ts in names.values() for t in ts}}
            teachers = {n: self._auto_class().from_config(copy.deepcopy(c)) for n, c in configs.items()}
            batches = _batches(self.corpus, probe.data_collator, self.preset.batch_size, 4)
            cache = (text_outputs.calibration_cache(self, Path(tmp), student, teachers["good"], batches)
                     if "cached" in kinds else None)
            steppers = {k: self._stepper(Path(tmp), student, [teachers[n] for n in names[k]], k, cache, batches)
                        for k in kinds}
            params = {k: 0 if k == "cached" else sum(p.numel() for n in names[k] for p in teachers[n].parameters())
                      for k in kinds}
            # the other workers' trainings, as baseline steps of their own student copies
            others = [self._stepper(Path(tmp), student, [], f"base-{i}") for i in range(1, workers)]
            cal = time_step_kinds(steppers, batches, kinds, params, rounds, steps_per_round, others)
            with running_in_background(others, batches[0]):
                t0 = time.perf_counter()
                probe.evaluate()  # the runs' own evaluation: the plan's estimate counts every one of them
                cal.seconds_per_evaluation = time.perf_counter() - t0
            return cal

    def _stepper(self, folder: Path, student, teachers: list, kind: str, cache: Path | None = None,
                 batches: list[dict] = ()):
        """One optimizer step of ``kind`` for the calibration, through the run's own ``compute_loss`` (or one step
        of teacher-output production: :mod:`.text_outputs`)."""
        if kind == "cached":
            return text_outputs.cached_stepper(self, folder, student, cache, batches, self._training_step)
        if kind.startswith("produce"):
            return text_outputs.produce_stepper(self, folder, student, teachers, kind)
        model = copy.deepcopy(student).train()
        # A post-cutoff step releases its teachers (moves them off the accelerator): give it copies of its own.
        ts = [copy.deepcopy(t) for t in teachers] if kind == "post" else teachers
        v = Variant(kind, ("good",) * len(ts), 0.5 if kind == "post" else None)
        trainer = self.trainer(folder / kind, 1000, 0, ts, v, student=model)
        trainer.state.max_steps = 1000
        trainer.state.global_step = 999 if kind == "post" else 0
        return self._training_step(trainer, model)

    def _training_step(self, trainer: DistillationTrainer, model: torch.nn.Module):
        """``step(batch)``: loss, backward and an AdamW step of ``model`` through ``trainer.compute_loss``."""
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch: dict) -> None:
            batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
            # a causal LM's trainer counts its next-token positions itself (None); the MLM one gets the masked count
            n = None if self.task == "clm" else (batch["labels"] != -100).sum()
            with trainer.autocast_smart_context_manager():  # bf16 where training uses it
                loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def results_extra(self) -> dict:
        stats = dict(self.corpus.stats)
        if stats.get("train_sequences"):
            stats["epochs_per_student"] = self.preset.steps * self.preset.batch_size / stats["train_sequences"]
        return {"corpus_stats": stats,
                "regime": {"unigram_entropy": unigram_entropy(self.corpus.val, self.corpus.tokenizer, self.task)}}


def _batches(corpus: Corpus, collator, batch_size: int, n: int) -> list[dict]:
    import itertools

    rows = list(itertools.islice(iter(corpus.train), batch_size * n))  # works for a stream too
    rows = [rows[i % len(rows)] for i in range(batch_size * n)]
    keep = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
    return [collator([{k: r[k] for k in keep if k in r} for r in rows[i * batch_size:(i + 1) * batch_size]])
            for i in range(n)]
