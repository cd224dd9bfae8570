"""The level a GLUE score must beat to mean anything: the majority class (and chance) on the task's own dev labels.

A fine-tune that learned nothing predicts one class, and one class scores well on some metrics: always
"paraphrase" gets MRPC F1 0.812 on the real dev set. A pretraining checkpoint whose fine-tunes sit there tells
nothing about that checkpoint, and a speed-up read off such scores is noise. Per task, from the labels of the
dev split(s) actually evaluated (so a ``--max_eval_samples`` cap is respected):

* **majority**: the metrics of always predicting the most frequent dev label (STS-B: always its mean score,
  whose correlations are 0, like CoLA's majority MCC);
* **chance**: the expected metrics of a uniform random guess (accuracy 1/k, F1 p/(p + 1/2) for a positive
  rate p, MCC and correlations 0).

The level is the higher of the two. The sweep stores both in every results line (``levels``); the report reads
them from there, or recomputes them from ``--glue_dir`` for lines written before they were stored::

    from glue_eval.levels import check_levels, dev_levels
    levels = dev_levels("mrpc", {"validation": labels})   # {"majority": {"f1": 0.812, ...}, "chance": {...}}
    check = check_levels(lines, "glue", tolerance_points=1.0)   # check.dead: tasks with no signal at all
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .metrics import LEADERBOARD_METRICS, task_metrics, task_score
from .tasks import TASKS


def _chance_split(task: str, labels: np.ndarray) -> dict[str, float]:
    spec = TASKS[task]
    if spec.is_regression:
        return {"pearson": 0.0, "spearmanr": 0.0}
    if task == "cola":
        return {"matthews_correlation": 0.0}
    out = {"accuracy": 1.0 / spec.num_labels}
    if task in ("mrpc", "qqp"):
        p = float((labels == 1).mean()) if len(labels) else 0.0
        out["f1"] = p / (p + 0.5)  # precision p, recall 1/2 when half the guesses say "positive"
    return out


def dev_levels(task: str, labels: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{"majority": metrics, "chance": metrics}`` of ``task`` from ``{eval split: dev labels}``."""
    spec = TASKS[task]
    outputs = {}
    for split, y in labels.items():
        y = np.asarray(y)
        if spec.is_regression:
            const = float(y.mean()) if len(y) else 0.0
        else:
            const = Counter(y.tolist()).most_common(1)[0][0] if len(y) else 0
        outputs[split] = (np.full(len(y), const), y)
    majority = task_metrics(task, outputs)
    if task == "mnli":
        chance = {f"accuracy_{s.split('_')[-1]}": 1.0 / spec.num_labels for s in labels}
    else:
        (y,) = labels.values()
        chance = _chance_split(task, np.asarray(y))
    return {"majority": {k: float(v) for k, v in majority.items()}, "chance": chance}


def task_value(metric: str, task: str, metrics: Mapping[str, float | None]) -> float | None:
    """The task's number as the report's ``metric`` sees it (points for the GLUE scores and ``score``; the raw
    fraction for a metric key); ``None`` when ``metric`` has no majority-class level (a loss, a missing key)."""
    try:
        if metric in ("glue", "score"):
            return task_score(task, metrics)
        if metric == "glue_score":
            keys = LEADERBOARD_METRICS[task]
            return 100.0 * sum(metrics[k] for k in keys) / len(keys)
    except (KeyError, TypeError):
        return None
    v = metrics.get(metric)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def tolerance_for(metric: str, points: float) -> float:
    """The tolerance in ``metric``'s own units: points for GLUE scores, a fraction for raw metric keys."""
    return points if metric in ("glue", "glue_score", "score") else points / 100.0


@dataclass
class TaskLevel:
    """One task's level and how many of its (run, checkpoint, seed) scores do not beat it."""

    task: str
    majority: float | None
    chance: float | None
    entries: int = 0
    at_level: int = 0

    @property
    def level(self) -> float | None:
        vals = [v for v in (self.majority, self.chance) if v is not None]
        return max(vals) if vals else None

    @property
    def no_signal(self) -> bool:
        """Every score of every run at the level: the task cannot tell checkpoints apart."""
        return self.entries > 0 and self.at_level == self.entries


@dataclass
class LevelCheck:
    """Which scores sit at their task's majority-class/chance level (``at_level``: (run, checkpoint, task, seed))."""

    metric: str
    tolerance: float  # in the metric's units
    tasks: dict[str, TaskLevel] = field(default_factory=dict)
    at_level: set = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # tasks whose lines carry no levels and no --glue_dir was given

    @property
    def dead(self) -> list[str]:
        return [t for t, lv in self.tasks.items() if lv.no_signal]

    def marks(self, run: str, checkpoint: str, seeds: int) -> list[str]:
        """Tasks at the level for every one of the ``seeds`` seeds of (run, checkpoint)."""
        count = Counter(t for r, c, t, _ in self.at_level if (r, c) == (run, checkpoint))
        return sorted(t for t, n in count.items() if seeds and n >= seeds)


def _levels_from_dir(glue_dir: str, task: str, eval_samples: Mapping | None, cache: dict) -> dict:
    from .data import read_split, split_files

    caps = tuple(sorted((eval_samples or {}).items()))
    if (task, caps) not in cache:
        files = {s: p for s, p in split_files(task, glue_dir).items() if s != "train"}
        labels = {s: np.asarray(read_split(task, p)["label"])[:dict(caps).get(s)] for s, p in files.items()}
        cache[(task, caps)] = dev_levels(task, labels)
    return cache[(task, caps)]


def check_levels(lines, metric: str, tolerance_points: float, glue_dir: str | None = None) -> LevelCheck:
    """Judge every (non-diverged) results line against its task's level; ``lines`` as the report selected them."""
    check = LevelCheck(metric, tolerance_for(metric, tolerance_points))
    cache: dict = {}
    for r in lines:
        task, levels = r.get("task"), r.get("levels")
        if task not in TASKS or r.get("diverged"):
            continue
        if levels is None and glue_dir:
            levels = _levels_from_dir(glue_dir, task, r.get("eval_samples"), cache)
        if levels is None:
            if task not in check.unknown:
                check.unknown.append(task)
            continue
        majority = task_value(metric, task, levels.get("majority", {}))
        chance = task_value(metric, task, levels.get("chance", {}))
        value = task_value(metric, task, r.get("metrics") or {})
        if value is None or (majority is None and chance is None):
            continue
        lv = check.tasks.setdefault(task, TaskLevel(task, majority, chance))
        lv.entries += 1
        if value <= lv.level + check.tolerance:
            lv.at_level += 1
            check.at_level.add((r["run"], r["checkpoint"], task, r.get("seed")))
    return check
