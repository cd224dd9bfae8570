"""Quality points for the report: from GLUE sweep results, or straight from pretraining runs.

A :class:`Point` is one quality value of one (run, checkpoint, seed) at a pretraining cost. The quality is
the GLUE average (``metric="glue"``, BERT Table 1) or the GLUE score (``"glue_score"``, leaderboard; see
``glue_eval.metrics``), or any scalar column of the results lines (top-level like ``score`` or inside
``metrics`` like ``accuracy``, ``eval_loss``; averaged over the tasks present), or any key of the runs'
``trainer_state.json`` log (``eval_loss``) via ``hf_kd.core.curves``. Before that, :func:`select_lines`
applies the fine-tuning protocol (lr grid: best on dev) and diverged fine-tunes are set aside::

    from glue_eval.quality import points_from_results
    points, note, info = points_from_results(records, metric="glue", cost_key="gpu_hours")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hf_kd.core.curves import Curve, curve_from_trainer_state, mean_std

from .metrics import GLUE_SCORES, is_diverged, score_coverage, task_score
from .tasks import resolve_tasks

logger = logging.getLogger(__name__)


def line_diverged(record: dict) -> bool:
    """A results line of a diverged fine-tune (flagged, or older lines: a metric stored as null)."""
    return bool(record.get("diverged")) or is_diverged(record.get("metrics") or {})


def line_score(record: dict) -> float | None:
    """The task's score in points (BERT Table 1 entries), ``None`` for a diverged line."""
    if line_diverged(record):
        return None
    try:
        return task_score(record["task"], record["metrics"])
    except KeyError:
        return _lookup(record, "score")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_one_per_seed(key: tuple, rows: list[dict]) -> None:
    seen: dict = {}
    for r in rows:
        if r.get("seed") in seen:
            a, b = _flat(seen[r.get("seed")].get("config") or {}), _flat(r.get("config") or {})
            diff = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            what = f"they differ in {diff}: {a.get(diff)!r} vs {b.get(diff)!r}" if diff else "two lines"
            raise ValueError(f"the results hold two configurations for {'/'.join(map(str, key))} seed {r.get('seed')} "
                             f"({what}); expected one per entry: one --results file per configuration, or a "
                             "--learning_rates grid")
        seen[r.get("seed")] = r


def _best_lr(rows: list[dict]) -> float:
    """Highest mean dev score over seeds; a rate with a diverged seed is not eligible; ties: the smaller rate."""
    by_lr: dict[float, list] = {}
    for r in rows:
        by_lr.setdefault(float(r["hparams"]["learning_rate"]), []).append(line_score(r))
    eligible = {lr: sum(v) / len(v) for lr, v in by_lr.items() if all(x is not None for x in v)}
    if not eligible:
        return min(by_lr)
    return max(sorted(eligible), key=lambda lr: eligible[lr])


def select_lines(records: Sequence[dict]) -> tuple[list[dict], dict]:
    """The lines a summary uses and the protocol that produced them.

    Per (run, checkpoint, task): with an lr grid (``lr_grid`` in the lines) the rate with the best mean dev
    score over seeds is kept (:func:`_best_lr`); otherwise the single configuration. More than one line for
    the same entry and seed that is not a grid is refused, naming what differs.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["run"], r["checkpoint"], r.get("task")), []).append(r)
    kept, selected, grids = [], {}, []
    for key, rows in groups.items():
        grid = [r for r in rows if r.get("lr_grid")]
        if grid and len(grid) < len(rows):
            raise ValueError(f"the results mix lr-grid and fixed-lr lines for {'/'.join(map(str, key))}; expected "
                             "one protocol per entry (one --results file per protocol)")
        if grid:
            grids.append(tuple(grid[0]["lr_grid"]))
            selected[key] = _best_lr(grid)
            rows = [r for r in grid if float(r["hparams"]["learning_rate"]) == selected[key]]
        _check_one_per_seed(key, rows)
        kept += rows
    if grids:
        rates = ", ".join(dict.fromkeys(f"{x:g}" for g in grids for x in g))
        protocol = (f"best-on-dev learning rate of {rates} per (checkpoint, task): the highest mean dev score "
                    "over seeds, reported on that same dev set (optimistic, like BERT's dev numbers)")
    else:
        protocol = "fixed learning rate per task (glue_eval/tasks.py table or the flags given), no selection"
    return kept, {"protocol": protocol, "selected": selected}


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
    if metric in GLUE_SCORES:
        return GLUE_SCORES[metric]({r["task"]: r["metrics"] for r in group}).value
    vals = [v for v in (_lookup(r, metric) for r in group) if v is not None]
    return sum(vals) / len(vals) if vals else None


def quality_label(metric: str, tasks: Sequence[str]) -> str:
    """What a point's value is, naming the task subset when not every task ran (the plot's y-label)."""
    if metric not in GLUE_SCORES:
        return f"{metric} (mean over tasks: {','.join(map(str, tasks))})"
    avg = score_coverage(metric, tasks)
    if not avg.missing:
        return avg.name
    return f"{avg.name} over {len(avg.tasks)}/{len(avg.tasks) + len(avg.missing)} tasks ({','.join(avg.tasks)})"


def points_from_results(records: Sequence[dict], metric: str = "glue", cost_key: str = "gpu_hours",
                        tasks: str | None = None) -> tuple[list[Point], str, dict]:
    """One point per (run, checkpoint, seed), a note on which tasks it covers, and how lines were chosen.

    Lines are first chosen by :func:`select_lines` (lr grid: best on dev). Only (run, checkpoint, seed) groups
    that hold every task present in the file are used (so all points average the same tasks); a group with a
    diverged fine-tune is left out of the curves too. Both kinds are named in the note; ``info`` carries
    ``protocol``, ``selected`` learning rates, ``diverged`` groups and ``ylabel``.
    """
    keep = set(resolve_tasks(tasks)) if tasks else None
    records, info = select_lines([r for r in records if keep is None or r.get("task") in keep])
    all_tasks = sorted({r.get("task") for r in records}, key=str)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["run"], r["checkpoint"], r.get("seed")), []).append(r)
    points, incomplete, diverged, diverged_groups = [], [], [], []
    for (run, ckpt, seed), group in groups.items():
        if sorted({r.get("task") for r in group}, key=str) != all_tasks:
            incomplete.append(f"{run}/{ckpt}/seed {seed}")
            continue
        bad = [r.get("task") for r in group if line_diverged(r)]
        if bad:
            diverged.append(f"{run}/{ckpt}/seed {seed}: {','.join(map(str, bad))}")
            diverged_groups.append({"run": run, "checkpoint": ckpt, "seed": seed, "step": group[0].get("step"),
                                    "cost": _lookup(group[0], cost_key)})
            continue
        value, cost = _group_value(group, metric), _lookup(group[0], cost_key)
        if value is None or cost is None:
            continue
        step = group[0].get("step")
        points.append(Point(run, ckpt, None if step is None else int(step), cost, seed, value))
    if not points and not diverged:
        raise ValueError(f"no result line gives --metric {metric!r} with a {cost_key!r} cost; expected 'glue', "
                         "'glue_score' or a numeric key of the lines or of their 'metrics'")
    note = f"tasks: {','.join(map(str, all_tasks))}"
    if metric in GLUE_SCORES:
        note = score_coverage(metric, all_tasks).label
    if incomplete:
        note += f"; incomplete entries left out: {', '.join(sorted(incomplete))}"
    info.update(diverged=sorted(diverged), diverged_groups=diverged_groups, ylabel=quality_label(metric, all_tasks))
    return points, note, info


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
    """One (run, checkpoint) of the table: mean and sample std over seeds (``n``), and diverged seeds left out."""

    run: str
    checkpoint: str
    step: int | None
    cost: float | None
    mean: float | None
    std: float | None
    n: int
    diverged: int = 0


def mark_diverged(rows: Sequence[Row], groups: Sequence[dict]) -> list[Row]:
    """The table: ``rows`` with each (run, checkpoint)'s diverged seeds counted; all-diverged ones added."""
    out = {(r.run, r.checkpoint): replace(r) for r in rows}
    for g in groups:
        key = (g["run"], g["checkpoint"])
        if key not in out:
            step = None if g["step"] is None else int(g["step"])
            out[key] = Row(g["run"], g["checkpoint"], step, g["cost"], None, None, 0)
        out[key].diverged += 1
    return sorted(out.values(), key=lambda r: (r.run, r.cost if r.cost is not None else math.inf))


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
