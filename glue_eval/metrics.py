"""GLUE metrics (as GLUE defines them) and the GLUE average (as the BERT paper computes it).

Metrics, from scikit-learn / scipy, as fractions (correlations in [-1, 1]):
CoLA ``matthews_correlation``; SST-2, QNLI, RTE, WNLI ``accuracy``; MRPC, QQP ``f1`` (positive class 1)
and ``accuracy``; STS-B ``pearson`` and ``spearmanr``; MNLI ``accuracy_matched`` and ``accuracy_mismatched``.
A correlation of a constant prediction is undefined; it is reported as 0.0 (as scikit-learn does for MCC).

**GLUE average** (the headline number, in points = x100): the BERT paper's Table 1 "Average" -- the
mean of nine entries: CoLA MCC, SST-2 acc, MRPC F1, STS-B Spearman, QQP F1, MNLI-m acc, MNLI-mm acc
(two entries), QNLI acc, RTE acc; WNLI excluded. This reproduces the paper's averages exactly
(BERT-base 79.6, BERT-large 82.1). With a subset of tasks the mean is over the entries of the tasks
present, and :class:`GlueAverage` says which ones (``label``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from .tasks import TASKS

# (task, metric) entries of the BERT paper's GLUE average; WNLI is excluded as BERT did.
BERT_AVERAGE_ENTRIES: tuple[tuple[str, str], ...] = (
    ("cola", "matthews_correlation"), ("sst2", "accuracy"), ("mrpc", "f1"), ("stsb", "spearmanr"),
    ("qqp", "f1"), ("mnli", "accuracy_matched"), ("mnli", "accuracy_mismatched"), ("qnli", "accuracy"),
    ("rte", "accuracy"),
)
AVERAGED_TASKS = tuple(dict.fromkeys(t for t, _ in BERT_AVERAGE_ENTRIES))


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(fn(a, b)[0])


def split_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of one eval split from raw model outputs (logits, or ``[N]``/``[N, 1]`` regression scores)."""
    spec = TASKS[task]
    labels = np.asarray(labels)
    preds = np.asarray(predictions)
    if spec.is_regression:
        preds, labels = preds.reshape(-1).astype(float), labels.reshape(-1).astype(float)
        return {"pearson": _corr(pearsonr, preds, labels), "spearmanr": _corr(spearmanr, preds, labels)}
    if preds.ndim > 1:
        preds = preds.argmax(-1)
    out = {"accuracy": float((preds == labels).mean())}
    if task == "cola":
        out = {"matthews_correlation": float(matthews_corrcoef(labels, preds))}
    elif task in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0.0))
    return out


def task_metrics(task: str, outputs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """All metrics of a task from ``{eval split: (predictions, labels)}``; MNLI's get ``_matched``/``_mismatched``."""
    if task != "mnli":
        (preds, labels), = outputs.values()
        return split_metrics(task, preds, labels)
    return {f"accuracy_{s.split('_')[-1]}": split_metrics(task, *outputs[s])["accuracy"]
            for s in TASKS[task].eval_splits}


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """One number per task in points: the mean of its entries in the GLUE average (WNLI: accuracy)."""
    keys = [m for t, m in BERT_AVERAGE_ENTRIES if t == task] or list(TASKS[task].metrics[:1])
    return 100.0 * sum(metrics[k] for k in keys) / len(keys)


@dataclass
class GlueAverage:
    """The GLUE average over the tasks present, and which those are."""

    value: float | None
    tasks: list[str]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def label(self) -> str:
        if self.complete:
            return "GLUE average (BERT convention: 9 entries of 8 tasks, WNLI excluded)"
        return (f"GLUE average over {len(self.tasks)}/{len(AVERAGED_TASKS)} tasks present "
                f"({','.join(self.tasks) or 'none'}; missing {','.join(self.missing)})")


def glue_average(per_task: Mapping[str, Mapping[str, float]]) -> GlueAverage:
    """BERT-convention GLUE average (points) of ``{task: metrics}``; WNLI and unknown keys are ignored."""
    values = [100.0 * per_task[t][m] for t, m in BERT_AVERAGE_ENTRIES if t in per_task and m in per_task[t]]
    present = [t for t in AVERAGED_TASKS if t in per_task]
    value = sum(values) / len(values) if values else None
    if value is not None and not math.isfinite(value):
        value = None
    return GlueAverage(value=value, tasks=present, missing=[t for t in AVERAGED_TASKS if t not in per_task])
