"""What a run costs, in baseline steps, under the three views of a recycled teacher (``docs/design.md``).

A calibration (:mod:`.calibrate`) gives each step kind's cost relative to a baseline step: ``base``, ``kd<k>`` (a
live KD step running ``k`` teachers), ``post`` (after the KD stop), ``cached`` (a KD step reading stored teacher
targets: no teacher runs; an ensemble's targets are stored mixed, so one read whatever the ensemble) and
``produce<k>`` (producing one step's targets with ``k`` teachers, inference only). A KD run's cost views:

* **live**: the paper's protocol, each KD step runs its teachers (``kd<k>``). A run that trained from a cache is
  charged what the same steps cost live.
* **amortised** (verdicts use it): cached steps, plus each cached step's production cost divided by the number of
  runs of the protocol that read that step (variants of one seed share one cache: before the 25 % stop, three
  runs read a step; after the 50 % stop only KD-throughout does).
* **sunk**: cached steps only; production treated like the teacher's own training (already paid).

Runs without teachers cost the same in every view.
"""

from __future__ import annotations

from collections import defaultdict

from ..core.schedule import resolve_kd_stop_step, teachers_per_step
from ..core.step_costs import charged_steps
from .protocol import Calibration, RunRecord

VIEWS = ("live", "amortised", "sunk")


def run_teachers_per_step(run: RunRecord) -> int:
    """Teachers a live KD step of ``run`` runs: all of a ``mean`` ensemble, one when sampling."""
    return teachers_per_step(len(run.teachers), run.selection or "mean")


def produce_kind(teachers: int) -> str:
    """The calibration key of producing one step's targets with ``teachers`` teachers."""
    return f"produce{teachers}"


def is_cached(run: RunRecord) -> bool:
    return bool(run.teachers) and run.teacher_outputs == "cached"


def kd_stop_step(run: RunRecord) -> int:
    return min(resolve_kd_stop_step(run.steps, run.kd_stop_ratio), run.steps)


def shared_steps(stops: list[int], upto: int) -> float:
    """``sum_{j < upto} 1 / readers(j)``, where ``readers(j)`` = how many of the readers (their KD stop steps
    ``stops``) read cached step ``j``: each step's production split among the runs that read it."""
    total, start = 0.0, 0
    for stop in sorted(set(stops)):
        end = min(stop, upto)
        if end > start:
            total += (end - start) / sum(1 for s in stops if s > start)
            start = end
    return total


class CostModel:
    """Cost of a run's first ``step`` steps under a view. ``runs``: every run of the report (a cache's readers)."""

    def __init__(self, calibration: Calibration, runs: list[RunRecord] = ()):
        self.relative = calibration.relative
        self.readers: dict[str, list[int]] = defaultdict(list)
        for r in runs:
            if is_cached(r):
                self.readers[r.cache].append(kd_stop_step(r))

    def cost(self, run: RunRecord, step: float, view: str = "amortised") -> float:
        rel = self.relative
        if not run.teachers:
            return charged_steps(step, 0, 0, rel)
        if not is_cached(run) or view == "live":
            return charged_steps(step, run_teachers_per_step(run), kd_stop_step(run), rel)
        stop = kd_stop_step(run)
        kd = min(step, stop)
        train = kd * rel["cached"] + max(0.0, step - kd) * rel.get("post", rel.get("base", 1.0))
        if view == "sunk":
            return train
        readers = self.readers.get(run.cache) or [stop]  # a run alone in its report is the cache's only reader
        return train + rel[produce_kind(run_teachers_per_step(run))] * shared_steps(readers, kd)

    def production(self, teachers: int, steps: int) -> float:
        """Cost of producing ``steps`` steps of targets (the plan's time estimate)."""
        return steps * self.relative[produce_kind(teachers)]
