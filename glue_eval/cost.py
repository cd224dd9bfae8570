"""A pretraining cost axis that machine load cannot bend: steps x calibrated step cost.

Wall-clock GPU-hours of runs made at different times on a shared machine differ with the load: a KD run that
happened to train while the machine was idle looks cheaper than a baseline that trained under load, although
a KD step does more work. As ``hf-kd reproduce`` does, the report can charge every step by its kind instead,
from one calibration (costs measured interleaved in one process, in units of one baseline step):

* ``base``: a step without teachers; ``kd`` (or ``kd<k>`` for ``k`` teachers run per step): a KD step;
  ``post``: a step after the run's KD stop step (default: the ``base`` cost).

Which kind each step of a checkpoint was is read from its run folder: ``all_results.json`` (``num_teachers``,
``kd_stop_step``: KD for steps ``0 .. kd_stop_step - 1``, ``teacher_forwards``) and, for sampled teacher
selection (one teacher per step), the ``kd_teacher`` entries of ``trainer_state.json``::

    costs = parse_step_costs("base=1.0,kd=1.47")          # or a reproduce run's calibration.json
    steps = read_run_steps("runs/kd")
    steps.cost(400, costs)                                 # baseline steps charged for the first 400 steps
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hf_kd.core.step_costs import charged_steps, kd_step_cost

KINDS_HELP = "base=COST,kd=COST[,kd2=COST,post=COST] or a calibration.json of hf-kd reproduce"


@dataclass(frozen=True)
class StepCosts:
    """Cost of one step of each kind, in baseline steps (``base`` is 1.0)."""

    relative: dict[str, float]
    source: str

    def kd(self, teachers: int) -> float:
        cost = kd_step_cost(self.relative, teachers)
        if cost is None:
            raise ValueError(f"--step_costs {self.source!r} has no cost for a KD step with {teachers} teacher(s); "
                             f"expected kd=COST (every KD step) or kd{teachers}=COST")
        return cost

    @property
    def post(self) -> float:
        return self.relative.get("post", 1.0)

    def label(self) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in sorted(self.relative.items()))


def _bad(text: str) -> ValueError:
    return ValueError(f"--step_costs {text!r} is invalid; expected {KINDS_HELP}, costs > 0")


def parse_step_costs(text: str) -> StepCosts:
    """``base=1.0,kd=1.47`` or the path of a ``calibration.json`` (its ``relative`` costs); scaled to base = 1."""
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--step_costs {text!r} does not exist; expected {KINDS_HELP}")
        try:
            raw = dict(json.loads(path.read_text())["relative"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--step_costs {text!r} has no 'relative' step costs; expected a calibration.json "
                             "written by hf-kd reproduce") from e
    else:
        raw = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            kind, _, value = item.partition("=")
            try:
                raw[kind.strip()] = float(value)
            except ValueError as e:
                raise _bad(text) from e
    ok = all(k in ("base", "kd", "post") or (k.startswith("kd") and k[2:].isdigit()) for k in raw)
    if not ok or "base" not in raw or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                               for v in raw.values()):
        raise _bad(text)
    return StepCosts({k: float(v) / raw["base"] for k, v in raw.items()}, text)


@dataclass(frozen=True)
class RunSteps:
    """What a pretraining run's steps were: ``teachers`` run per KD step (0: no KD) until ``kd_stop_step``."""

    teachers: int
    kd_stop_step: int

    def cost(self, step: float, costs: StepCosts) -> float:
        """Baseline steps charged for the run's first ``step`` optimizer steps."""
        if self.teachers:
            costs.kd(self.teachers)  # a calibration without this step kind: one line naming what it lacks
        return charged_steps(step, self.teachers, self.kd_stop_step, costs.relative)

    def describe(self) -> str:
        if not self.teachers:
            return "no KD"
        return f"KD with {self.teachers} teacher(s) per step before step {self.kd_stop_step}, plain after"


def read_run_steps(run_dir: str | Path) -> RunSteps:
    """The run's step kinds from its ``all_results.json`` (and ``trainer_state.json`` for sampled teachers)."""
    path = Path(run_dir) / "all_results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: the calibrated cost axis needs the run's KD stop step "
                                "and teacher count; expected a finished pretraining run (or --cost gpu_hours)")
    res = json.loads(path.read_text())
    teachers = int(res.get("num_teachers", 0) or 0)
    if teachers and int(res.get("teacher_forwards", 1) or 0) == 0:  # kd_alpha 0: teachers never ran
        teachers = 0
    state = Path(run_dir) / "trainer_state.json"
    if teachers > 1 and state.is_file():
        log = json.loads(state.read_text()).get("log_history", [])
        if any("kd_teacher" in e for e in log):  # sampled selection: one teacher's forward per step
            teachers = 1
    return RunSteps(teachers, int(res.get("kd_stop_step", 0) or 0))
