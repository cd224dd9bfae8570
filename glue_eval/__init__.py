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
``report`` (CLIs), ``quality`` (report inputs), ``levels`` (majority-class/chance levels of the dev labels),
``cost`` (the calibrated step-cost axis), ``speedups`` (per-seed speed-ups and their verdicts), ``report_md``
(the report's markdown), ``testing`` (tiny fixtures). See ``docs/glue.md``.
"""

from __future__ import annotations

import importlib

# Exported name -> submodule; imported on first use, so that ``python -m glue_eval.report`` does not import
# its own module twice (and ``import glue_eval`` stays light).
_EXPORTS = {
    "FinetuneArguments": "args", "GlueArguments": "args", "parse_glue_args": "args",
    "glue_average": "metrics", "glue_leaderboard_score": "metrics",
    "ReportArguments": "report", "build_report": "report",
    "RunGlueArguments": "run_glue", "evaluate_on_glue": "run_glue", "summarize": "run_glue",
    "SweepArguments": "sweep", "find_checkpoints": "sweep", "run_sweep": "sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
