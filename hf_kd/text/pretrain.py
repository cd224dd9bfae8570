"""Pretraining with optional KD, masked (``task="mlm"``) or causal (``task="clm"``) LM: the logic behind
``run_scripts/run_mlm_kd.py``, ``run_scripts/run_clm_kd.py`` and ``hf-kd reproduce``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizerBase, set_seed

from ..core.cache_format import TeacherCacheError
from ..core.checkpointing import check_run_dir, latest_complete_checkpoint
from ..core.errors import Interrupted
from ..core.hub import hours_label, take_hub_settings
from ..core.paths import check_output_dir_creatable
from ..core.teachers import TOKENIZER_FILES, check_model_reference
from ..core.trackers import check_trackers
from .cache_manifest import check_cache_for_run
from .card import publish_run
from .config import DistillationTrainingArguments
from .data import (
    DataError,
    ResumableMLMCollator,
    Split,
    cap,
    load_raw_splits,
    text_sample,
    tokenize_and_chunk,
    train_wordpiece_tokenizer,
)
from .models import (
    build_student,
    check_seq_length,
    check_teacher_positions,
    check_vocab_fits,
    teacher_tokenizer_for_student,
)
from .script_args import DataArguments, ModelArguments
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)

def mlm_accuracy(eval_pred) -> dict[str, float]:
    """Masked-token accuracy from the ``[N, L]`` argmax predictions the trainer returns at eval (-100 elsewhere)."""
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds = preds[0] if isinstance(preds, tuple) else preds
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else 0.0}


def next_token_accuracy(eval_pred) -> dict[str, float]:
    """Causal LMs: share of next tokens predicted right (the trainer returns ``preds[:, i]`` = guess for token i+1)."""
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds = preds[0] if isinstance(preds, tuple) else preds
    preds, labels = preds[:, :-1], labels[:, 1:]
    mask = (labels != -100) & (preds != -100)
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else 0.0}


def resume_hint(step: int, output_dir: str) -> str:
    """What to do after Ctrl-C at ``step``: the checkpoint a rerun resumes from, or that none was saved yet."""
    last = latest_complete_checkpoint(output_dir)
    if last is None:
        return (f"interrupted at step {step}, before the first checkpoint; rerun the same command with "
                "--overwrite_output_dir to start again")
    return (f"interrupted at step {step}; rerun the same command with --resume_from_checkpoint latest to resume "
            f"from {Path(last).name}")


def load_tokenizer(model_args: ModelArguments, train_raw, column: str):
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name:
        if Path(name).is_dir() and not any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
            # transformers would build an empty 5-token tokenizer here: every word [UNK], nothing ever masked.
            raise DataError(f"folder {name!r} has no tokenizer files (e.g. {TOKENIZER_FILES[0]}); pass --tokenizer_name")
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
        except (OSError, ValueError) as e:  # ValueError: a folder with no tokenizer files, or remote code refused
            raise DataError(f"could not load a tokenizer from {name!r} ({str(e).splitlines()[0].strip()}); expected a "
                            "folder with tokenizer files, or pass --tokenizer_name") from e
    return train_wordpiece_tokenizer(text_sample(train_raw, column), model_args.vocab_size)


@dataclass
class TextData:
    """What a text run trains and evaluates on: the tokenizer and the chunked (not yet masked) splits."""

    tokenizer: PreTrainedTokenizerBase
    train: Split
    val: Split


def _tokenizer(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments, train_raw):
    """The teacher's tokenizer (KD needs its ids), the named one, or one trained here on the training text."""
    tokenizer = teacher_tokenizer_for_student(model_args, args.teacher_model_name_or_path, args.teacher_trust_remote_code)
    return tokenizer if tokenizer is not None else load_tokenizer(model_args, train_raw, data_args.text_column_name)


def _tokenize(data_args: DataArguments, args: DistillationTrainingArguments, tokenizer, train_raw, val_raw) -> TextData:
    col, n = data_args.text_column_name, data_args.preprocessing_num_workers
    with args.main_process_first(desc="tokenizing"):
        train = cap(tokenize_and_chunk(train_raw, tokenizer, col, data_args.max_seq_length, n), data_args.max_train_samples)
        val = cap(tokenize_and_chunk(val_raw, tokenizer, col, data_args.max_seq_length, n, what="validation data"),
                  data_args.max_eval_samples)
    return TextData(tokenizer, train, val)


def prepare_text_data(model_args: ModelArguments, data_args: DataArguments,
                      args: DistillationTrainingArguments) -> TextData:
    """Raw splits -> tokenizer (the teacher's, the named one, or one trained here) -> fixed-length chunks."""
    train_raw, val_raw = load_raw_splits(data_args)
    return _tokenize(data_args, args, _tokenizer(model_args, data_args, args, train_raw), train_raw, val_raw)


def new_student(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                tokenizer, task: str = "mlm"):
    """A student initialised from ``args.seed``, checked against the sequence length and the vocabulary."""
    set_seed(args.seed)  # the Trainer seeds only once built: a from-scratch student must not get random init
    student = build_student(model_args, tokenizer, allow_pickle=args.allow_pickle_weights, task=task)
    check_seq_length(student, data_args.max_seq_length)
    check_vocab_fits(student, tokenizer)
    return student


def text_collator(task: str, tokenizer, data_args: DataArguments, args: DistillationTrainingArguments):
    """The batch collator of a text run: next-token labels (``clm``) or masks drawn from (seed, batch) (``mlm``)."""
    if task == "clm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = input_ids, padding -100
    # masks drawn from (seed, batch) rather than the global RNG, so a resumed run is bit-identical
    return ResumableMLMCollator(tokenizer, mlm_probability=data_args.mlm_probability,
                                seed=args.data_seed if args.data_seed is not None else args.seed)


def trainer_for_data(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                     data: TextData, teacher_model=None, callbacks=None, task: str = "mlm",
                     student=None) -> DistillationTrainer:
    """A fresh student (seeded by ``args.seed``), the collator and the teachers on ``data`` -> a ready trainer.

    Separate from :func:`build_trainer` so that many runs on one corpus (``hf-kd reproduce``) tokenize it once
    and still build everything else exactly as the scripts do. ``student``: an already-built one instead (the
    reproduce calibration times copies of one student; :func:`build_trainer` builds it before tokenizing).
    """
    if student is None:
        student = new_student(model_args, data_args, args, data.tokenizer, task)
    if args.teacher_model_name_or_path is None and teacher_model is None and args.kd_teacher_cache is None:
        logger.info("no teacher: this is a no-KD baseline run")
    return DistillationTrainer(model=student, teacher_model=teacher_model, args=args, train_dataset=data.train,
                               eval_dataset=data.val, data_collator=text_collator(task, data.tokenizer, data_args, args),
                               processing_class=data.tokenizer,
                               compute_metrics=next_token_accuracy if task == "clm" else mlm_accuracy,
                               callbacks=callbacks)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                  teacher_model=None, callbacks=None, task: str = "mlm") -> DistillationTrainer:
    """Data, tokenizer, student and teachers -> a ready ``DistillationTrainer`` (nothing trained yet).

    ``task``: ``"mlm"`` (BERT-style student, resumable random masking) or ``"clm"`` (GPT/Llama-style student,
    next-token labels; no randomness in the collator, so resume is exact too).
    """
    train_raw, val_raw = load_raw_splits(data_args)
    tokenizer = _tokenizer(model_args, data_args, args, train_raw)
    student = new_student(model_args, data_args, args, tokenizer, task)  # a misfit fails before tokenizing
    data = _tokenize(data_args, args, tokenizer, train_raw, val_raw)
    return trainer_for_data(model_args, data_args, args, data, teacher_model, callbacks, task, student=student)


def run_pretraining(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                    teacher_model=None, callbacks=None, task: str = "mlm") -> dict[str, float]:
    """Train, save the final model and ``all_results.json``; returns the final metrics."""
    check_trackers(args.report_to)  # a missing tracker package fails now, not after model and data set-up
    resumed = check_run_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    resume = None if resumed is None else str(resumed)
    check_output_dir_creatable(args.output_dir)
    # A mistyped local path fails now, in one line, not after data prep with a Hub error (or timeout).
    for what, name in (("model", model_args.model_name_or_path), ("tokenizer", model_args.tokenizer_name),
                       ("config", model_args.config_name)):
        if name:
            check_model_reference(name, what)
    for name in args.teacher_model_name_or_path or ():
        check_model_reference(name)
    given = teacher_model if isinstance(teacher_model, list | tuple) else [teacher_model] if teacher_model else []
    check_teacher_positions([*given, *(args.teacher_model_name_or_path or ())], data_args.max_seq_length,
                            args.teacher_trust_remote_code)
    hub = take_hub_settings(args)  # we push after training; the Trainer's own push would open the repo now
    new_folder = not Path(args.output_dir).exists()
    try:
        trainer = build_trainer(model_args, data_args, args, teacher_model, callbacks, task)
        if args.kd_teacher_cache is not None:  # refused here, in one line, before any training
            check_cache_for_run(model_args, data_args, args, trainer, task)
    except TeacherCacheError:
        # The Trainer creates output_dir when built: a refused run leaves no trace (an empty folder we made).
        if new_folder and Path(args.output_dir).is_dir() and not any(Path(args.output_dir).iterdir()):
            Path(args.output_dir).rmdir()
        raise
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt as e:
        raise Interrupted(resume_hint(trainer.state.global_step, args.output_dir)) from e
    trainer.save_model()
    metrics = dict(train_result.metrics)
    eval_metrics = trainer.evaluate()
    metrics.update(eval_metrics)
    metrics["perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
    metrics["gpu_hours"] = trainer.cost_callback.meter.gpu_hours
    metrics["eval_gpu_hours"] = trainer.cost_callback.meter.eval_gpu_hours
    metrics["kd_stop_step"] = trainer.kd_stop_step if trainer.teacher_names else 0
    metrics["num_teachers"] = len(trainer.teacher_names)
    metrics["teacher_forwards"] = trainer.teacher_forwards
    if args.kd_teacher_cache is not None:
        metrics["teacher_cache_gpu_hours"] = trainer.teacher_cache_gpu_hours
    trainer.save_metrics("all", {k: (float(v) if isinstance(v, np.floating) else v) for k, v in metrics.items()})
    # As run_mlm.py: print the final train/eval metrics and keep them in train_results.json / eval_results.json.
    final_eval = {**eval_metrics, "perplexity": metrics["perplexity"]}
    for split, values in (("train", train_result.metrics), ("eval", final_eval)):
        trainer.log_metrics(split, values)
        trainer.save_metrics(split, values)
    trainer.save_state()
    logger.info("cost: %.4g %s of training, %.4g of evaluation (keys gpu_hours, eval_gpu_hours)",
                metrics["gpu_hours"], hours_label(args.device.type), metrics["eval_gpu_hours"])
    publish_run(trainer, metrics, data_args, hub)  # model card always; upload only with --push_to_hub
    return metrics
