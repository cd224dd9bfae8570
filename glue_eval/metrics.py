"""GLUE metrics (as GLUE defines them) and the two GLUE scores (BERT Table 1 average, leaderboard score).

Metrics, from scikit-learn / scipy, as fractions (correlations in [-1, 1]):
CoLA ``matthews_correlation``; SST-2, QNLI, RTE, WNLI ``accuracy``; MRPC, QQP ``f1`` (positive class 1)
and ``accuracy``; STS-B ``pearson`` and ``spearmanr``; MNLI ``accuracy_matched`` and ``accuracy_mismatched``.
A correlation of a constant prediction is undefined; it is reported as 0.0 (as scikit-learn does for MCC).

Two GLUE scores, in points (x100), each named wherever it is shown:

* **GLUE average (BERT Table 1)**, :func:`glue_average`: the mean of nine entries -- CoLA MCC, SST-2 acc,
  MRPC F1, STS-B Spearman, QQP F1, MNLI-m acc, MNLI-mm acc (two entries), QNLI acc, RTE acc; WNLI excluded.
  Reproduces BERT-base 79.6, BERT-large 82.1.
* **GLUE score (leaderboard)**, :func:`glue_leaderboard_score`: the mean of nine task scores, each task's the
  mean of its metrics (MRPC F1/acc, QQP F1/acc, STS-B Pearson/Spearman, MNLI m/mm), WNLI included, AX not.
  Reproduces BERT-base 78.3, BERT-large 80.5.

With a subset of tasks each is the mean over the tasks present, and its ``label`` says which. A task whose
needed metrics are missing or non-finite (a diverged fine-tune: stored as ``null``) is left out of the mean
and named in the label ("stsb diverged, excluded").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """One number per task in points: the mean of its entries in the BERT Table 1 average (WNLI: accuracy)."""
    keys = [m for t, m in BERT_AVERAGE_ENTRIES if t == task] or list(TASKS[task].metrics[:1])
    return 100.0 * sum(metrics[k] for k in keys) / len(keys)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_diverged(metrics: Mapping[str, float | None]) -> bool:
    """A fine-tune diverged when any of its metrics (eval loss included) is missing-as-null or non-finite."""
    return any(not _finite(v) for v in metrics.values())


@dataclass
class GlueAverage:
    """One GLUE score over the tasks present: its value, which tasks it covers, which are missing or diverged."""

    value: float | None
    tasks: list[str]
    missing: list[str]
    diverged: list[str] = field(default_factory=list)
    kind: str = "bert"  # "bert" (Table 1 average) or "leaderboard"

    @property
    def complete(self) -> bool:
        return not self.missing and not self.diverged

    @property
    def name(self) -> str:
        return "GLUE average (BERT Table 1)" if self.kind == "bert" else "GLUE score (leaderboard)"

    @property
    def label(self) -> str:
        n_all = len(self.tasks) + len(self.missing) + len(self.diverged)
        rule = ("9 entries of 8 tasks, WNLI excluded" if self.kind == "bert"
                else "mean of 9 task scores, two-metric tasks averaged, WNLI included")
        if not self.missing and not self.diverged:
            return f"{self.name}: {rule}"
        text = f"{self.name} over {len(self.tasks)}/{n_all} tasks present ({','.join(self.tasks) or 'none'}"
        if self.missing:
            text += f"; missing {','.join(self.missing)}"
        if self.diverged:
            text += "; " + ", ".join(f"{t} diverged" for t in self.diverged) + ", excluded*"
        return text + ")"


def _score(per_task: Mapping[str, Mapping[str, float | None]], entries: dict[str, tuple[str, ...]],
           kind: str) -> GlueAverage:
    """Mean over tasks of ``entries`` present: per task, its metrics' values (points) are averaged (BERT:
    each entry counts, so MNLI's two entries weigh twice)."""
    values, present, diverged = [], [], []
    for task, keys in entries.items():
        if task not in per_task:
            continue
        got = [per_task[task].get(k) for k in keys]
        if not all(_finite(v) for v in got):
            diverged.append(task)
            continue
        present.append(task)
        points = [100.0 * v for v in got]
        values += points if kind == "bert" else [sum(points) / len(points)]
    value = sum(values) / len(values) if values else None
    missing = [t for t in entries if t not in per_task]
    return GlueAverage(value=value, tasks=present, missing=missing, diverged=diverged, kind=kind)


BERT_ENTRIES: dict[str, tuple[str, ...]] = {t: tuple(m for u, m in BERT_AVERAGE_ENTRIES if u == t)
                                            for t in AVERAGED_TASKS}


def glue_average(per_task: Mapping[str, Mapping[str, float | None]]) -> GlueAverage:
    """GLUE average of BERT's Table 1 (points) of ``{task: metrics}``; WNLI and unknown keys are ignored."""
    return _score(per_task, BERT_ENTRIES, "bert")


# Per task, the metrics the GLUE leaderboard averages into the task's score (AX is not part of the score).
LEADERBOARD_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearmanr"), "qqp": ("f1", "accuracy"), "mnli": ("accuracy_matched", "accuracy_mismatched"),
    "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
}


def glue_leaderboard_score(per_task: Mapping[str, Mapping[str, float | None]]) -> GlueAverage:
    """GLUE leaderboard score (points): mean over the nine tasks of each task's mean metric, WNLI included."""
    return _score(per_task, LEADERBOARD_METRICS, "leaderboard")


GLUE_SCORES = {"glue": glue_average, "glue_score": glue_leaderboard_score}


def score_coverage(metric: str, tasks) -> GlueAverage:
    """A GLUE score's description (no value) over ``tasks``: which count, which are missing."""
    entries, kind = (BERT_ENTRIES, "bert") if metric == "glue" else (LEADERBOARD_METRICS, "leaderboard")
    return GlueAverage(None, [t for t in entries if t in tasks], [t for t in entries if t not in tasks], kind=kind)
