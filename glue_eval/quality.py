"""Quality points for the report: from GLUE sweep results, or straight from pretraining runs.

A :class:`Point` is one quality value of one (run, checkpoint, seed) at a pretraining cost. The quality is
the GLUE average (``metric="glue"``, BERT convention, see ``glue_eval.metrics``) or any scalar column of the
results lines (top-level like ``score`` or inside ``metrics`` like ``accuracy``, ``eval_loss``; averaged over
the tasks present), or any key of the runs' ``trainer_state.json`` log (``eval_loss``) via ``hf_kd.core.curves``::

    from glue_eval.quality import points_from_results
    points, note = points_from_results(records, metric="glue", cost_key="gpu_hours")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hf_kd.core.curves import Curve, curve_from_trainer_state, mean_std

from .metrics import glue_average
from .tasks import resolve_tasks

logger = logging.getLogger(__name__)


@dataclass
class Point:
    run: str
    checkpoint: str
    step: int | None
    cost: float
    seed: int | None
    value: float


def _lookup(record: dict, key: str) -> float | None:
    v = record.get(key, (record.get("metrics") or {}).get(key))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _group_value(group: list[dict], metric: str) -> float | None:
    if metric == "glue":
        return glue_average({r["task"]: r["metrics"] for r in group}).value
    vals = [v for v in (_lookup(r, metric) for r in group) if v is not None]
    return sum(vals) / len(vals) if vals else None


def points_from_results(records: Sequence[dict], metric: str = "glue", cost_key: str = "gpu_hours",
                        tasks: str | None = None) -> tuple[list[Point], str]:
    """One point per (run, checkpoint, seed) and a note on which tasks it covers.

    Only (run, checkpoint, seed) groups that hold every task present in the file are used (so all points
    average the same tasks); the incomplete ones are named in the note.
    """
    keep = set(resolve_tasks(tasks)) if tasks else None
    records = [r for r in records if keep is None or r.get("task") in keep]
    all_tasks = sorted({r.get("task") for r in records}, key=str)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["run"], r["checkpoint"], r.get("seed")), []).append(r)
    points, incomplete = [], []
    for (run, ckpt, seed), group in groups.items():
        if sorted({r.get("task") for r in group}, key=str) != all_tasks:
            incomplete.append(f"{run}/{ckpt}/seed {seed}")
            continue
        value, cost = _group_value(group, metric), _lookup(group[0], cost_key)
        if value is None or cost is None:
            continue
        step = group[0].get("step")
        points.append(Point(run, ckpt, None if step is None else int(step), cost, seed, value))
    if not points:
        raise ValueError(f"no result line gives --metric {metric!r} with a {cost_key!r} cost; expected 'glue' or a "
                         "numeric key of the lines or of their 'metrics'")
    note = f"tasks: {','.join(map(str, all_tasks))}"
    if metric == "glue":
        note = glue_average({t: {} for t in all_tasks}).label
    if incomplete:
        note += f"; incomplete entries left out: {', '.join(sorted(incomplete))}"
    return points, note


def points_from_runs(run_dirs: Sequence[str], metric: str, cost_key: str = "gpu_hours",
                     higher_is_better: bool = False) -> list[Point]:
    """Every logged ``metric`` of each pretraining run's ``trainer_state.json``, at its cost (no seeds)."""
    points = []
    for d in run_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"--from_runs {d!r} is not a folder; expected a pretraining run folder")
        name = Path(d).resolve().name
        curve = curve_from_trainer_state(d, name, metric, cost_key, higher_is_better)
        steps = curve_from_trainer_state(d, name, metric, "step", higher_is_better).cost
        if len(steps) != len(curve.cost):
            steps = [None] * len(curve.cost)
        mine: dict = {}
        for i, (c, q) in enumerate(zip(curve.cost, curve.quality)):
            step = None if steps[i] is None else int(steps[i])
            key = i if step is None else step  # the final evaluate() repeats the last step's: keep one
            mine[key] = Point(name, f"eval-{i + 1}" if step is None else f"step-{step}", step, c, None, q)
        points += mine.values()
    if not points:
        raise ValueError(f"--from_runs: no {metric!r} with a {cost_key!r} cost in the runs' trainer_state.json "
                         "log_history; expected an evaluated run (--eval_strategy steps)")
    return points


@dataclass
class Row:
    """One (run, checkpoint) of the table: mean and sample std over seeds."""

    run: str
    checkpoint: str
    step: int | None
    cost: float
    mean: float
    std: float
    n: int


def table_rows(points: Sequence[Point]) -> list[Row]:
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.run, p.checkpoint), []).append(p)
    rows = []
    for (run, ckpt), ps in groups.items():
        m, s, n = mean_std([p.value for p in ps])
        rows.append(Row(run, ckpt, ps[0].step, sum(p.cost for p in ps) / len(ps), m, s, n))
    return sorted(rows, key=lambda r: (r.run, r.cost))


def mean_curves(rows: Sequence[Row], higher_is_better: bool) -> dict[str, Curve]:
    """Per run: the seeds' mean quality against cost."""
    out: dict[str, Curve] = {}
    for run in dict.fromkeys(r.run for r in rows):
        mine = [r for r in rows if r.run == run]
        out[run] = Curve(run, [r.cost for r in mine], [r.mean for r in mine], higher_is_better)
    return out


def seed_curves(points: Sequence[Point], higher_is_better: bool) -> dict[str, dict]:
    """Per run and seed: that seed's quality against cost."""
    out: dict[str, dict] = {}
    for run in dict.fromkeys(p.run for p in points):
        for seed in dict.fromkeys(p.seed for p in points if p.run == run):
            mine = [p for p in points if p.run == run and p.seed == seed]
            out.setdefault(run, {})[seed] = Curve(run, [p.cost for p in mine], [p.value for p in mine],
                                                  higher_is_better)
    return out
