"""Run planned GLUE fine-tunes with the transformers ``Trainer``: one results line each, one progress bar.

Sequence-classification heads (one output with MSE for STS-B). Used by ``glue_eval.run_glue`` (one model)
and ``glue_eval.sweep`` (every checkpoint of pretraining runs); jobs come from ``glue_eval.plan``::

    from glue_eval.finetune import run_jobs
    from glue_eval.plan import plan_model
    jobs = plan_model("runs/kd", {"run": "kd", "checkpoint": "final"}, gargs, fargs, ["rte"], "glue/work")
    run_jobs(jobs, gargs, fargs, ResultsFile("glue/results.jsonl"))

A diverged fine-tune (a non-finite training loss or metric) is written with its metrics as ``null`` and
``"diverged": true``; the summaries and the report show it as diverged and leave it out of the averages.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace

import datasets
import numpy as np
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from .args import FinetuneArguments, GlueArguments
from .data import load_task
from .levels import dev_levels
from .metrics import is_diverged, task_metrics, task_score
from .plan import Job, warmup_for
from .quiet import quiet_loads
from .results import ResultsFile
from .tasks import TASKS, HParams

logger = logging.getLogger(__name__)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a tokenizer from {name!r}: {str(e).strip().splitlines()[0]}") from e


def tokenize_task(task: str, tokenizer, gargs: GlueArguments, hp: HParams) -> datasets.DatasetDict:
    """The task's splits tokenized (truncated to ``hp.max_seq_length``; padding per batch)."""
    spec, max_len = TASKS[task], hp.max_seq_length
    raw = load_task(task, gargs.glue_dir, gargs.max_train_samples, gargs.max_eval_samples)

    def encode(batch):
        texts = [batch[c] for c in spec.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_len)

    return raw.map(encode, batched=True, remove_columns=list(spec.text_columns), desc=f"tokenizing {task}")


def training_args_for(job: Job, fargs: FinetuneArguments) -> TrainingArguments:
    """The user's TrainingArguments with this job's hyperparameters, seed and scratch folder."""
    hp = job.hp
    return replace(fargs, output_dir=str(job.work_dir / job.name), run_name=job.name, seed=job.seed,
                   data_seed=job.seed, learning_rate=hp.learning_rate, num_train_epochs=hp.num_train_epochs,
                   per_device_train_batch_size=hp.per_device_train_batch_size, weight_decay=hp.weight_decay,
                   warmup_steps=warmup_for(hp, fargs))


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def load_classifier(model_path: str, task: str, trust_remote_code: bool):
    """The checkpoint with a new classification (or regression) head for ``task``."""
    spec = TASKS[task]
    labels = spec.labels or ("score",)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=spec.num_labels, trust_remote_code=trust_remote_code, output_loading_info=True,
        problem_type="regression" if spec.is_regression else "single_label_classification",
        id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    logger.debug("%s: new parameters %s; unused checkpoint parameters %s", model_path,
                sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", [])))
    return model


def finetune(job: Job, tokenizer, data: datasets.DatasetDict, gargs: GlueArguments,
             fargs: FinetuneArguments, quiet: bool = False) -> dict:
    """Fine-tune ``job.model_path`` on ``job.task``; metrics on every dev split, timing, hyperparameters."""
    spec = TASKS[job.task]
    set_seed(job.seed)  # the new head's initialisation depends on the seed
    model = load_classifier(job.model_path, job.task, gargs.trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    targs = training_args_for(job, fargs)
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    if quiet:  # the sweep's bar replaces the per-fine-tune log printing (trackers still get every log)
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    train_out = trainer.train()
    seconds = time.perf_counter() - start
    outputs, losses = {}, []
    for split in spec.eval_splits:
        pred = trainer.predict(data[split], metric_key_prefix="eval")
        outputs[split] = (pred.predictions, pred.label_ids)
        losses.append(pred.metrics.get("eval_loss", float("nan")))
    metrics = task_metrics(job.task, outputs)
    metrics["eval_loss"] = sum(losses) / len(losses)
    metrics = {k: _finite(float(v)) for k, v in metrics.items()}
    train_loss = _finite(float(train_out.training_loss))
    diverged = train_loss is None or is_diverged(metrics)
    if gargs.keep_models and trainer.is_world_process_zero():
        trainer.save_model(str(job.work_dir / job.name / "model"))
    return {"metrics": metrics, "score": None if diverged else _finite(task_score(job.task, metrics)),
            "diverged": diverged, "train_loss": train_loss, "finetune_seconds": seconds,
            "finetune_gpu_hours": seconds * max(1, targs.world_size) / 3600.0,
            "finetune_steps": train_out.global_step, "train_samples": len(data["train"]),
            "eval_samples": {s: len(data[s]) for s in spec.eval_splits}, "hparams": asdict(job.hp),
            # what a fine-tune that learned nothing scores on these dev labels: the report flags scores there
            "levels": dev_levels(job.task, {s: np.asarray(data[s]["label"]) for s in spec.eval_splits})}


@contextmanager
def quiet_per_model_output(enabled: bool) -> Iterator[None]:
    """Silence what transformers/datasets print for every fine-tune while the sweep's own bar runs.

    Loading a pretraining checkpoint into a classification model makes transformers log a ``LOAD REPORT``
    table (a warning of logger ``transformers.modeling_utils``) of the new head and the dropped MLM head --
    expected here; so are the INFO lines of every load (:func:`glue_eval.quiet.quiet_loads` drops both). The
    weight-loading and tokenizing bars are switched off. Everything is restored afterwards.
    """
    hf_bars, ds_bars = hf_logging.is_progress_bar_enabled(), datasets.utils.logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    try:
        with quiet_loads(enabled):
            yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


def run_jobs(jobs: Sequence[Job], gargs: GlueArguments, fargs: FinetuneArguments, results: ResultsFile,
             show_progress: bool = True) -> list[dict]:
    """Fine-tune every job not yet in ``results`` (one appended line each) under one "k/N fine-tunes" bar."""
    todo = [j for j in jobs if not results.done(j.line)]
    show = show_progress and ("disable_tqdm" not in fargs.given or not fargs.disable_tqdm)
    # The user's --log_level, not the process level: the CLI turns "passive" into INFO on the main process
    # (as run_glue.py does), but per-fine-tune load/tokenize output is noise unless asked for explicitly.
    quiet_levels = ("passive", "warning", "error", "critical")
    written, tokenizers, data = [], {}, {}
    bar = tqdm(total=len(todo), desc="GLUE fine-tunes", unit="fine-tune", disable=not show)
    quiet = show and fargs.log_level in quiet_levels
    with bar, quiet_per_model_output(quiet):
        for job in todo:
            bar.set_postfix_str(job.name, refresh=True)
            name = gargs.tokenizer_name or job.model_path
            if name not in tokenizers:
                tokenizers = {name: load_tokenizer(name, gargs.trust_remote_code)}
            key = (name, job.task, job.hp.max_seq_length)
            if key not in data:  # one task's data in memory at a time
                data = {key: tokenize_task(job.task, tokenizers[name], gargs, job.hp)}
            logger.debug("fine-tuning %s", job.name)
            out = {**job.line, **finetune(job, tokenizers[name], data[key], gargs, fargs, quiet)}
            results.append(out)
            written.append(out)
            if not gargs.keep_models:
                shutil.rmtree(job.work_dir / job.name, ignore_errors=True)
            bar.update(1)
    return written
