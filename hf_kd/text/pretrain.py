"""Pretraining with optional KD, masked (``task="mlm"``) or causal (``task="clm"``) LM: the logic behind
``run_scripts/run_mlm_kd.py``, ``run_scripts/run_clm_kd.py`` and ``hf-kd reproduce``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, set_seed

from ..core.checkpointing import check_run_dir, latest_complete_checkpoint
from ..core.errors import Interrupted
from ..core.hub import hours_label, take_hub_settings
from ..core.paths import check_output_dir_creatable
from ..core.teachers import TOKENIZER_FILES, check_model_reference
from ..core.trackers import check_trackers
from .card import publish_run
from .config import DistillationTrainingArguments
from .data import (
    DataError,
    ResumableMLMCollator,
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


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                  teacher_model=None, callbacks=None, task: str = "mlm") -> DistillationTrainer:
    """Data, tokenizer, student and teachers -> a ready ``DistillationTrainer`` (nothing trained yet).

    ``task``: ``"mlm"`` (BERT-style student, resumable random masking) or ``"clm"`` (GPT/Llama-style student,
    next-token labels; no randomness in the collator, so resume is exact too).
    """
    train_raw, val_raw = load_raw_splits(data_args)
    tokenizer = teacher_tokenizer_for_student(model_args, args.teacher_model_name_or_path, args.teacher_trust_remote_code)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_args, train_raw, data_args.text_column_name)
    set_seed(args.seed)  # the Trainer seeds only once built: a from-scratch student must not get random init
    student = build_student(model_args, tokenizer, allow_pickle=args.allow_pickle_weights, task=task)
    check_seq_length(student, data_args.max_seq_length)
    check_vocab_fits(student, tokenizer)
    col, n = data_args.text_column_name, data_args.preprocessing_num_workers
    with args.main_process_first(desc="tokenizing"):
        train = cap(tokenize_and_chunk(train_raw, tokenizer, col, data_args.max_seq_length, n), data_args.max_train_samples)
        val = cap(tokenize_and_chunk(val_raw, tokenizer, col, data_args.max_seq_length, n, what="validation data"),
                  data_args.max_eval_samples)
    if task == "clm":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = input_ids, padding -100
    else:  # masks drawn from (seed, batch) rather than the global RNG, so a resumed run is bit-identical
        collator = ResumableMLMCollator(tokenizer, mlm_probability=data_args.mlm_probability,
                                        seed=args.data_seed if args.data_seed is not None else args.seed)
    if args.teacher_model_name_or_path is None and teacher_model is None:
        logger.info("no teacher: this is a no-KD baseline run")
    return DistillationTrainer(model=student, teacher_model=teacher_model, args=args, train_dataset=train,
                               eval_dataset=val, data_collator=collator, processing_class=tokenizer,
                               compute_metrics=next_token_accuracy if task == "clm" else mlm_accuracy,
                               callbacks=callbacks)


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
    trainer = build_trainer(model_args, data_args, args, teacher_model, callbacks, task)
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
