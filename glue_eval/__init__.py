"""GLUE harness for hf-kd: fine-tune pretraining checkpoints on GLUE and report quality vs pretraining cost.

After the README's pretraining walk-through (``runs/baseline``, ``runs/kd``)::

    python -m glue_eval.sweep --runs runs/baseline runs/kd --tasks rte --results glue/results.jsonl
    python -m glue_eval.report glue/results.jsonl --baseline baseline --output_dir glue/report

From Python (the same functions the commands call)::

    from glue_eval import run_sweep, build_report, ReportArguments, SweepArguments, parse_glue_args
    sargs, gargs, fargs = parse_glue_args((SweepArguments,), ["--runs", "runs/baseline", "runs/kd",
                                                              "--tasks", "rte", "--results", "glue/results.jsonl"])
    run_sweep(sargs, gargs, fargs)
    build_report(ReportArguments(baseline="baseline", output_dir="glue/report", results="glue/results.jsonl"))

Modules: ``tasks`` (task specs, hyperparameter table), ``data`` (Hub / GLUE-download loaders), ``metrics``
(GLUE metrics, the two GLUE scores), ``args`` (arguments on ``TrainingArguments``), ``plan`` (jobs and
results keys), ``finetune`` (Trainer fine-tuning), ``results`` (resumable JSONL), ``run_glue`` / ``sweep`` /
``report`` (CLIs), ``quality`` (report inputs), ``testing`` (tiny fixtures). See ``docs/glue.md``.
"""

from .args import FinetuneArguments, GlueArguments, parse_glue_args
from .metrics import glue_average, glue_leaderboard_score
from .report import ReportArguments, build_report
from .run_glue import RunGlueArguments, evaluate_on_glue, summarize
from .sweep import SweepArguments, find_checkpoints, run_sweep

__all__ = [
    "FinetuneArguments",
    "GlueArguments",
    "ReportArguments",
    "RunGlueArguments",
    "SweepArguments",
    "build_report",
    "evaluate_on_glue",
    "find_checkpoints",
    "glue_average",
    "glue_leaderboard_score",
    "parse_glue_args",
    "run_sweep",
    "summarize",
]
