"""A cost axis that machine load cannot bend: per-step costs of each step kind, measured interleaved in one process.

On a shared machine the wall-clock cost of runs made minutes apart differs with the load. Here every step kind
the protocol uses -- a baseline step (``base``), a KD step with ``k`` teachers (``kd<k>``), a step after the KD
cutoff (``post``) -- is timed in the same process, in rotating order over several rounds, so load changes hit
all kinds alike; the median per kind is kept. A run's calibrated cost after ``s`` steps is then the sum of its
steps' kind costs, in units of one baseline step, so every run is charged from the same measurement.

The back end builds the step functions (:meth:`TaskBackend.measure_step_costs`) with teachers of the size the
runs' real teachers have; this module times them and does the arithmetic, for every task alike.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.atomic import write_text_atomic
from ..core.schedule import teachers_per_step
from ..core.step_costs import kd_kind
from .costs import CostModel, produce_kind
from .presets import TEACHER_BUDGETS
from .protocol import CacheSpec, Calibration, RunRecord, Variant

logger = logging.getLogger(__name__)
ENSEMBLE = ("good", "second", "poor")


def step_kind(teachers, selection: str = "mean") -> str:
    """The kind of a run's KD steps: ``kd<k>`` with ``k`` teachers run per step (1 when sampling)."""
    return kd_kind(teachers_per_step(len(teachers), selection))


def kinds_for(vs: list[Variant]) -> list[str]:
    """The step kinds ``vs`` need (:mod:`.costs`): a cached KD variant needs its live kind too (the live view)."""
    kinds = {"base"}
    for v in vs:
        if v.teachers:
            kinds.add(step_kind(v.teachers, v.selection))
            if v.kd_stop_ratio is not None:
                kinds.add("post")
            if v.outputs == "cached":
                kinds.update(("cached", produce_kind(teachers_per_step(len(v.teachers), v.selection))))
    return sorted(kinds)


def teachers_per_kind(kinds: list[str]) -> dict[str, tuple[str, ...]]:
    """The teachers a step of each kind runs: ``kd1`` and ``post`` the good one, ``kd<k>`` / ``produce<k>`` the
    first ``k`` of the ensemble (a sampled ensemble step runs one teacher; the good one stands for it); ``cached``
    none (it reads targets produced by the good one)."""
    def names(k: str) -> tuple[str, ...]:
        for prefix in ("kd", "produce"):
            if k.startswith(prefix):
                return ENSEMBLE[:int(k[len(prefix):])]
        return ("good",) if k in ("post", "cached") else ()

    return {k: names(k) for k in kinds}


def calibrated_cost(run: RunRecord, step: float, calibration: Calibration) -> float:
    """Cost of ``run``'s first ``step`` steps in baseline-step units (``calibration.relative``), the run alone
    reading its cache if it has one (the report charges a shared cache with :class:`.costs.CostModel`)."""
    return CostModel(calibration).cost(run, step)


def time_step_kinds(steppers: dict[str, Callable], batches: list, kinds: list[str], teacher_parameters: dict[str, int],
                    rounds: int = 5, steps_per_round: int = 3, background: list[Callable] = ()) -> Calibration:
    """Seconds per optimizer step of each kind (median over ``rounds``, one warm-up round discarded).

    ``background``: steps of other models (one per other parallel worker) run in a loop in threads while the kinds
    are timed, so the seconds are those of a step that shares the machine with the other workers, as the runs will
    (on 2 cores, two workers' steps each take longer than one alone: dividing the work by the workers assumes
    otherwise). Torch releases the GIL inside its ops, so the threads compute side by side.
    """
    with running_in_background(background, batches[0]):
        return _time_step_kinds(steppers, batches, kinds, teacher_parameters, rounds, steps_per_round)


@contextmanager
def running_in_background(steps: list[Callable], batch):
    stop = threading.Event()

    def loop(step: Callable) -> None:
        while not stop.is_set():
            step(batch)

    threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in steps]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()


def _time_step_kinds(steppers: dict[str, Callable], batches: list, kinds: list[str],
                     teacher_parameters: dict[str, int], rounds: int, steps_per_round: int) -> Calibration:
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds + 1):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotate, so no kind always goes first
        for k in order:
            _sync()
            t0 = time.perf_counter()
            for i in range(steps_per_round):
                steppers[k](batches[i % len(batches)])
            _sync()
            if r:  # round 0 warms up allocators and caches
                times[k].append((time.perf_counter() - t0) / steps_per_round)
    sec = {k: statistics.median(v) for k, v in times.items()}
    return Calibration(seconds_per_step=sec, relative={k: v / sec["base"] for k, v in sec.items()}, rounds=rounds,
                       steps_per_round=steps_per_round, threads=torch.get_num_threads(), kinds=kinds,
                       teacher_parameters=teacher_parameters)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def calibration_size(scale: float = 1.0) -> tuple[int, int]:
    """(rounds, steps per round) of the calibration for a protocol ``scale`` times the preset's budget: 5 x 3 at
    full size, fewer for a quick look (``--steps`` below the preset's), so its fixed cost shrinks with the budget
    (at least 3 timed rounds of 2 steps, so the median still discards an outlier round)."""
    k = min(1.0, scale)
    return max(3, round(5 * k)), max(2, round(3 * k))


def estimate_seconds(runs: list[RunRecord], teacher_steps: int, calibration: Calibration, workers: int = 1,
                     evaluations: int = 0, calibration_seconds: float = 0.0, caches: list[CacheSpec] = ()) -> float:
    """Time the plan needs on this machine: the calibration itself, plus every run's calibrated steps (teachers'
    steps are baseline steps: they train at the students' size) x the measured seconds per baseline step and
    ``evaluations`` x the measured seconds per evaluation, and the teacher-output ``caches`` to produce (their
    steps x the calibrated production cost), shared by ``workers`` processes.

    Process start-up and checkpoint writes are not included (a few % of a run).
    """
    base = calibration.seconds_per_step["base"]
    costs = CostModel(calibration)
    steps = sum(costs.cost(r, r.steps, "sunk") for r in runs) + teacher_steps
    steps += sum(costs.production(teachers_per_step(len(c.teachers), c.selection), c.steps) for c in caches)
    work = steps * base + evaluations * calibration.seconds_per_evaluation
    return calibration_seconds + work / max(1, workers)


# Preset fields that change no step's cost (rates, budgets of teachers, the data stream): a rerun that sets them
# reuses the calibration measured beside the runs it shares (a fresh one under other load would move every cost).
NOT_COST_SHAPING = ("learning_rate", "kd_learning_rate", "data_seed", *TEACHER_BUDGETS)


def _cost_shaping(key: dict) -> dict:
    preset = {k: value for k, value in (key.get("preset") or {}).items()
              if value is not None and k not in NOT_COST_SHAPING}
    return {**key, "preset": preset}


def load_or_measure(path: Path, key: dict, measure: Callable[[], Calibration]) -> Calibration:
    """The calibration stored at ``path`` for ``key`` (reused on reruns, so resumed runs share it), else measure."""
    key = json.loads(json.dumps(key, default=str))
    if path.is_file():
        saved = json.loads(path.read_text())
        if _cost_shaping(saved.get("key") or {}) == _cost_shaping(key):
            return Calibration.from_dict(saved)
    cal = measure()
    cal.key = key
    path.parent.mkdir(parents=True, exist_ok=True)  # after measuring: a model refused while timing leaves no folder
    write_text_atomic(path, json.dumps(cal.to_dict(), indent=2))
    logger.info("calibrated step costs (baseline step = 1): %s", cal.relative)
    return cal
