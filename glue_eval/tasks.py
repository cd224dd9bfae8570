"""The nine GLUE tasks: file layout, label sets, metrics, and the default fine-tuning hyperparameter table.

The default is a **fixed learning rate per task** (one fine-tuning per task and seed): batch 32, 10 % linear
warmup, weight decay 0.01, max length 128; 2e-5 and 3 epochs for the large tasks (SST-2, QQP, MNLI, QNLI),
3e-5 for CoLA (3 epochs) and for the small MRPC, STS-B, RTE, WNLI (5 epochs). This is *not* the BERT
paper's protocol, which fine-tunes 3 epochs for each learning rate in {2,3,4,5}e-5 and keeps the best on
dev; that protocol is ``--learning_rates 2e-5 3e-5 4e-5 5e-5 --num_train_epochs 3`` (4x the fine-tunes).
Every value can be overridden from the command line (``glue_eval.run_glue --help``)::

    python -m glue_eval.run_glue --model_name_or_path runs/kd --tasks rte,mrpc --learning_rate 2e-5 \\
        --hparam_overrides rte.num_train_epochs=10,mrpc.per_device_train_batch_size=16 --output_dir glue/kd
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task as the original download lays it out (``<glue_dir>/<folder>/train.tsv, dev*.tsv``)."""

    name: str  # the ``nyu-mll/glue`` config name, also the CLI name
    folder: str  # folder in the original GLUE download
    labels: tuple[str, ...]  # label strings in the files, in the Hub's id order; () = regression
    text_columns: tuple[str, ...]  # Hub column names of sentence(s)
    eval_splits: tuple[str, ...] = ("validation",)  # Hub split names; MNLI has two
    metrics: tuple[str, ...] = ("accuracy",)

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", "CoLA", ("0", "1"), ("sentence",), metrics=("matthews_correlation",)),
    TaskSpec("sst2", "SST-2", ("0", "1"), ("sentence",)),
    TaskSpec("mrpc", "MRPC", ("0", "1"), ("sentence1", "sentence2"), metrics=("f1", "accuracy")),
    TaskSpec("stsb", "STS-B", (), ("sentence1", "sentence2"), metrics=("pearson", "spearmanr")),
    TaskSpec("qqp", "QQP", ("0", "1"), ("question1", "question2"), metrics=("f1", "accuracy")),
    TaskSpec("mnli", "MNLI", ("entailment", "neutral", "contradiction"), ("premise", "hypothesis"),
             eval_splits=("validation_matched", "validation_mismatched"),
             metrics=("accuracy_matched", "accuracy_mismatched")),
    TaskSpec("qnli", "QNLI", ("entailment", "not_entailment"), ("question", "sentence")),
    TaskSpec("rte", "RTE", ("entailment", "not_entailment"), ("sentence1", "sentence2")),
    TaskSpec("wnli", "WNLI", ("0", "1"), ("sentence1", "sentence2")),
)}

# Dev file of each Hub eval split in the original download.
DEV_FILES = {"validation": "dev.tsv", "validation_matched": "dev_matched.tsv",
             "validation_mismatched": "dev_mismatched.tsv"}


@dataclass(frozen=True)
class HParams:
    """Fine-tuning hyperparameters of one task."""

    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_seq_length: int = 128


HPARAMS: dict[str, HParams] = {
    "cola": HParams(learning_rate=3e-5),
    "sst2": HParams(),
    "mrpc": HParams(learning_rate=3e-5, num_train_epochs=5),
    "stsb": HParams(learning_rate=3e-5, num_train_epochs=5),
    "qqp": HParams(),
    "mnli": HParams(),
    "qnli": HParams(),
    "rte": HParams(learning_rate=3e-5, num_train_epochs=5),
    "wnli": HParams(learning_rate=3e-5, num_train_epochs=5),
}
HPARAM_NAMES = tuple(f.name for f in fields(HParams))


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """``"all"`` or comma/space separated task names -> canonical names in GLUE order, without repeats."""
    items = spec if isinstance(spec, list) else [spec]
    names = [n.strip().lower().replace("-", "") for s in items for n in str(s).replace(",", " ").split()]
    if not names:
        raise ValueError(f"--tasks {spec!r} names no task; expected 'all' or some of {','.join(TASKS)}")
    if "all" in names:
        return list(TASKS)
    aliases = {"sst": "sst2", "sts": "stsb"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise ValueError(f"unknown GLUE task {bad[0]!r} in --tasks; expected 'all' or some of {','.join(TASKS)}")
    return [t for t in TASKS if t in names]


def _parse_value(key: str, text: str):
    typ = type(getattr(HParams(), key))
    try:
        return typ(float(text)) if typ is int and float(text).is_integer() else typ(text)
    except ValueError as e:
        raise ValueError(f"hyperparameter {key}={text!r} is not a valid {typ.__name__}") from e


def task_hparams(task: str, overrides: dict | None = None, per_task: str | None = None) -> HParams:
    """The table's row for ``task``, then ``overrides`` (all tasks), then ``per_task`` items for this task.

    ``per_task`` is ``"task.key=value,..."`` (e.g. ``rte.num_train_epochs=10``).
    """
    hp = replace(HPARAMS[task], **{k: v for k, v in (overrides or {}).items() if v is not None})
    for item in filter(None, (s.strip() for s in (per_task or "").split(","))):
        target, _, value = item.partition("=")
        t, _, key = target.partition(".")
        if not value or key not in HPARAM_NAMES or t not in TASKS:
            raise ValueError(f"--hparam_overrides item {item!r} is invalid; expected TASK.KEY=VALUE with TASK in "
                             f"{','.join(TASKS)} and KEY in {','.join(HPARAM_NAMES)}")
        if t == task:
            hp = replace(hp, **{key: _parse_value(key, value)})
    if not 0.0 <= hp.warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio={hp.warmup_ratio} for {task} is invalid; expected a fraction of the "
                         "training steps in [0, 1) (or an explicit --warmup_steps N)")
    return hp
