"""Command-line arguments of the GLUE harness, built on ``transformers.TrainingArguments`` as its run_glue.py is.

Every ``TrainingArguments`` flag works (``--optim``, ``--bf16``, ``--torch_compile``, ``--deepspeed``,
``--report_to wandb``, ...). The harness only changes a few *defaults* (a flag given on the command line or in
a JSON/YAML arguments file always wins):

* ``--learning_rate``, ``--num_train_epochs``, ``--per_device_train_batch_size``, ``--weight_decay``: the
  per-task table of ``glue_eval.tasks`` unless given (then for every task);
* ``--save_strategy no`` (fine-tunes are scratch), ``--disable_tqdm true`` (the sweep shows one bar over all
  fine-tunes instead), ``--logging_steps 50``, ``--per_device_eval_batch_size 128``.

``--seed`` is replaced by ``--seeds`` (one fine-tune per seed); ``--output_dir`` holds the fine-tunes'
scratch folders (``run_glue``: also ``results.jsonl`` and ``summary.json``)::

    from glue_eval.args import parse_glue_args
    from glue_eval.run_glue import RunGlueArguments
    rargs, gargs, fargs = parse_glue_args((RunGlueArguments,), ["--model_name_or_path", "runs/kd", ...])
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from transformers import HfArgumentParser, TrainingArguments

from hf_kd.core.cli_utils import parse_args

# Defaults of the harness for TrainingArguments fields the user did not give.
HARNESS_DEFAULTS = {"save_strategy": "no", "disable_tqdm": True, "logging_steps": 50,
                    "per_device_eval_batch_size": 128}
# TrainingArguments fields that override the per-task table when given.
TABLE_FIELDS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "weight_decay")


@dataclass
class GlueArguments:
    """What to fine-tune on and how the sweep is organised (no field of ``TrainingArguments`` is repeated)."""

    tasks: str = field(default="all", metadata={"help": "'all' or comma-separated: cola,sst2,mrpc,stsb,qqp,mnli,"
                                                "qnli,rte,wnli."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Fine-tuning seeds, e.g. 0 1 2 (one "
                                                                    "fine-tune each; replaces --seed)."})
    glue_dir: str | None = field(default=None, metadata={"help": "Folder of the original GLUE download "
                                                          "(<dir>/<TASK>/train.tsv, dev.tsv). Unset: the Hub's "
                                                          "nyu-mll/glue."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer; default the checkpoint's."})
    learning_rates: list[float] | None = field(default=None, metadata={
        "help": "Learning-rate grid, e.g. 2e-5 3e-5 4e-5 5e-5: every (task, seed) is fine-tuned at each, and "
                "per (checkpoint, task) the rate with the best mean dev score over seeds is reported (BERT's "
                "protocol with --num_train_epochs 3). Unset: one fixed rate per task (the table)."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Linear warmup as a fraction of the "
                                                               "training steps, in [0, 1); default the table's "
                                                               "0.1. Or give --warmup_steps N."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Max tokens per example; default the "
                                                               "table's 128 (cut to the model's positions)."})
    hparam_overrides: str | None = field(default=None, metadata={"help": "Per-task overrides, e.g. "
                                                                 "rte.num_train_epochs=10,cola.learning_rate=2e-5"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training rows per task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on rows per dev split."})
    keep_models: bool = field(default=False, metadata={"help": "Keep each fine-tuned model (default: deleted)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("--seeds is empty; expected one or more integers, e.g. --seeds 0 1 2")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio {self.warmup_ratio} is invalid; expected a fraction of the training "
                             "steps in [0, 1) (or --warmup_steps N)")
        if self.learning_rates is not None and (not self.learning_rates or min(self.learning_rates) <= 0):
            raise ValueError(f"--learning_rates {self.learning_rates} is invalid; expected positive rates, e.g. "
                             "2e-5 3e-5 4e-5 5e-5")
        for name in ("max_train_samples", "max_eval_samples", "max_seq_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)} is invalid; expected a positive integer")


@dataclass
class FinetuneArguments(TrainingArguments):
    """``TrainingArguments`` of every fine-tune (no field added); ``given`` names the fields the user set."""

    given: ClassVar[frozenset[str]] = frozenset()


def _file_keys(path: str) -> set[str]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        return set(json.loads(text))
    import yaml

    return set(yaml.safe_load(text) or {})


def given_fields(dataclass_types: Sequence[type], argv: Sequence[str]) -> set[str]:
    """Field names set on the command line (or keys of a single JSON/YAML arguments file)."""
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) and Path(argv[0]).is_file():
        return _file_keys(argv[0])
    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:  # a parse without defaults leaves exactly the flags present in argv
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


def parse_glue_args(extra_types: Sequence[type], argv: Sequence[str]) -> tuple:
    """``(*extras, GlueArguments, FinetuneArguments)`` from ``argv``, the harness defaults applied."""
    types = (*extra_types, GlueArguments, FinetuneArguments)
    parsed = parse_args(types, list(argv))
    given = frozenset(given_fields(types, argv))
    *extras, gargs, fargs = parsed
    if "seed" in given:
        raise ValueError("--seed is not used by the GLUE harness; expected --seeds S [S ...] (one fine-tune each)")
    if "warmup_steps" in given and gargs.warmup_ratio is not None:
        raise ValueError("--warmup_ratio and --warmup_steps were both given; expected one of them")
    if "learning_rate" in given and gargs.learning_rates is not None:
        raise ValueError("--learning_rate and --learning_rates were both given; expected one: a fixed rate or a grid")
    if str(getattr(fargs.eval_strategy, "value", fargs.eval_strategy)) != "no":
        raise ValueError(f"--eval_strategy {fargs.eval_strategy.value!r} is not supported: each fine-tune is evaluated "
                         "once on the dev split(s) after training; expected no (the default)")
    for name, value in HARNESS_DEFAULTS.items():
        if name not in given:
            setattr(fargs, name, value)
    fargs.given = given
    return (*extras, gargs, fargs)
