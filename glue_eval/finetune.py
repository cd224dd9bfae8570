"""Fine-tune one pretrained checkpoint on GLUE tasks with the transformers ``Trainer``.

Sequence-classification heads (one output with MSE for STS-B). Used by ``glue_eval.run_glue`` (one model)
and ``glue_eval.sweep`` (every checkpoint of pretraining runs)::

    from glue_eval.finetune import FinetuneArguments, evaluate_model
    from glue_eval.results import ResultsFile
    evaluate_model("runs/kd", FinetuneArguments(tasks="rte", seeds=[0], glue_dir="../shared/data/glue"),
                   ResultsFile("glue/results.jsonl"), {"run": "kd", "checkpoint": "final"}, "glue/work")
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import datasets
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .data import check_glue_dir, load_task
from .metrics import task_metrics, task_score
from .results import ResultsFile
from .tasks import TASKS, HParams, resolve_tasks, task_hparams

logger = logging.getLogger(__name__)


@dataclass
class FinetuneArguments:
    """How to fine-tune: tasks, seeds, data, and overrides of the per-task table in ``glue_eval.tasks``."""

    tasks: str = field(default="all", metadata={"help": "'all' or comma-separated: cola,sst2,mrpc,stsb,qqp,mnli,"
                                                "qnli,rte,wnli."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Fine-tuning seeds, e.g. 0 1 2."})
    glue_dir: str | None = field(default=None, metadata={"help": "Original GLUE download (<dir>/<TASK>/train.tsv, "
                                                          "dev.tsv). Unset: the Hub's nyu-mll/glue."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer; default the checkpoint's."})
    learning_rate: float | None = field(default=None, metadata={"help": "Override the table for all tasks."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Override the table for all tasks."})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Override for all tasks."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Override the table for all tasks."})
    weight_decay: float | None = field(default=None, metadata={"help": "Override the table for all tasks."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Override the table for all tasks."})
    hparam_overrides: str | None = field(default=None, metadata={"help": "Per-task overrides, e.g. "
                                                                 "rte.num_train_epochs=10,cola.learning_rate=2e-5"})
    max_steps: int = field(default=-1, metadata={"help": "Cap on optimizer steps per fine-tuning (smoke tests)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training rows per task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on rows per dev split."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision."})
    fp16: bool = field(default=False, metadata={"help": "fp16 mixed precision."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is present."})
    logging_steps: int = field(default=50, metadata={"help": "Trainer logging interval."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading processes."})
    keep_models: bool = field(default=False, metadata={"help": "Save each fine-tuned model (default: deleted)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})

    def hparams(self, task: str) -> HParams:
        overrides = {k: getattr(self, k) for k in asdict(HParams())}
        return task_hparams(task, overrides, self.hparam_overrides)

    def validate(self) -> list[str]:
        """Resolved task list; raises on a bad task name, override, seed list or glue dir (before any write)."""
        tasks = resolve_tasks(self.tasks)
        for t in tasks:
            self.hparams(t)
        if not self.seeds:
            raise ValueError("--seeds is empty; expected one or more integers, e.g. --seeds 0 1 2")
        if self.glue_dir is not None:
            check_glue_dir(self.glue_dir, tasks)
        return tasks


def load_tokenizer(name: str, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a tokenizer from {name!r}: {str(e).strip().splitlines()[0]}") from e


def position_limit(model_path: str, trust_remote_code: bool = False) -> int | None:
    """The checkpoint's ``max_position_embeddings`` (longer inputs would index out of range)."""
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a model config from {model_path!r}: {str(e).strip().splitlines()[0]}") from e
    return getattr(config, "max_position_embeddings", None)


def fit_hparams(hp: HParams, limit: int | None, task: str) -> HParams:
    """``hp`` with ``max_seq_length`` cut to what the model's position embeddings allow (logged)."""
    if limit is None or hp.max_seq_length <= limit:
        return hp
    logger.warning("%s: max_seq_length %d > the model's max_position_embeddings %d; using %d", task,
                   hp.max_seq_length, limit, limit)
    return replace(hp, max_seq_length=limit)


def tokenize_task(task: str, tokenizer, args: FinetuneArguments, hp: HParams) -> datasets.DatasetDict:
    """The task's splits tokenized (truncated to ``hp.max_seq_length``; padding per batch)."""
    spec, max_len = TASKS[task], hp.max_seq_length
    raw = load_task(task, args.glue_dir, args.max_train_samples, args.max_eval_samples)

    def encode(batch):
        texts = [batch[c] for c in spec.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_len)

    return raw.map(encode, batched=True, remove_columns=list(spec.text_columns), desc=f"tokenizing {task}")


def _training_args(hp: HParams, seed: int, args: FinetuneArguments, work_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(work_dir), learning_rate=hp.learning_rate, num_train_epochs=hp.num_train_epochs,
        per_device_train_batch_size=hp.per_device_train_batch_size, warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay, max_steps=args.max_steps, seed=seed, data_seed=seed,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, bf16=args.bf16, fp16=args.fp16,
        use_cpu=args.use_cpu, logging_steps=args.logging_steps, dataloader_num_workers=args.dataloader_num_workers,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True)


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def finetune(model_path: str, tokenizer, task: str, data: datasets.DatasetDict, seed: int,
             args: FinetuneArguments, work_dir: Path, hp: HParams) -> dict:
    """Fine-tune ``model_path`` on ``task`` with ``seed``; metrics on every dev split, timing, hyperparameters."""
    spec = TASKS[task]
    set_seed(seed)  # the new head's initialisation depends on the seed
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=spec.num_labels, trust_remote_code=args.trust_remote_code,
        problem_type="regression" if spec.is_regression else "single_label_classification",
        id2label=dict(enumerate(spec.labels or ("score",))),
        label2id={v: i for i, v in enumerate(spec.labels or ("score",))})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    targs = _training_args(hp, seed, args, work_dir)
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    train_out = trainer.train()
    seconds = time.perf_counter() - start
    outputs, losses = {}, []
    for split in spec.eval_splits:
        pred = trainer.predict(data[split], metric_key_prefix="eval")
        outputs[split] = (pred.predictions, pred.label_ids)
        losses.append(pred.metrics.get("eval_loss", float("nan")))
    metrics = task_metrics(task, outputs)
    metrics["eval_loss"] = sum(losses) / len(losses)
    if args.keep_models and trainer.is_world_process_zero():
        trainer.save_model(str(work_dir / "model"))
    return {"task": task, "seed": seed, "metrics": {k: _finite(float(v)) for k, v in metrics.items()},
            "score": _finite(task_score(task, metrics)), "finetune_seconds": seconds,
            "finetune_gpu_hours": seconds * max(1, targs.world_size) / 3600.0,
            "finetune_steps": train_out.global_step, "train_samples": len(data["train"]),
            "eval_samples": {s: len(data[s]) for s in spec.eval_splits}, "hparams": asdict(hp)}


def evaluate_model(model_path: str, args: FinetuneArguments, results: ResultsFile, record: dict,
                   work_root: str | Path, tasks: list[str] | None = None) -> list[dict]:
    """Fine-tune ``model_path`` on every (task, seed) not yet in ``results``; one appended line each.

    ``record`` holds the fields shared by this model's lines (``run``, ``checkpoint``, cost ...).
    """
    tasks = tasks or args.validate()
    todo = [(t, s) for t in tasks for s in args.seeds if not results.done({**record, "task": t, "seed": s})]
    if not todo:
        return []
    tokenizer = load_tokenizer(args.tokenizer_name or model_path, args.trust_remote_code)
    limit = position_limit(model_path, args.trust_remote_code)
    written, data = [], {}
    for task, seed in todo:
        hp = fit_hparams(args.hparams(task), limit, task)
        if task not in data:
            data = {task: tokenize_task(task, tokenizer, args, hp)}  # one task's data in memory at a time
        work_dir = Path(work_root) / f"{record['run']}--{record['checkpoint']}--{task}--seed{seed}"
        logger.info("fine-tuning %s %s on %s, seed %d", record["run"], record["checkpoint"], task, seed)
        result = finetune(model_path, tokenizer, task, data[task], seed, args, work_dir, hp)
        out = {**record, "model": str(model_path), **result}
        results.append(out)
        written.append(out)
        if not args.keep_models:
            shutil.rmtree(work_dir, ignore_errors=True)
    return written
