"""Steps charged at their calibrated cost: one definition for ``hf-kd reproduce`` and the GLUE report.

A calibration gives the cost of one optimizer step of each kind in units of one baseline step: ``base`` (no
teacher), ``kd<k>`` (a KD step running ``k`` teachers; ``kd`` stands for any ``k`` without its own entry) and
``post`` (a step after the KD stop step; default: ``base``). A run's first ``step`` steps are KD steps up to its
stop step and plain ones after it (``docs/design.md``, "The stop step").
"""

from __future__ import annotations

from collections.abc import Mapping


def kd_kind(teachers_per_step: int) -> str:
    """The calibration key of a KD step that runs ``teachers_per_step`` teachers (1 when sampling one per step)."""
    return f"kd{teachers_per_step}"


def kd_step_cost(relative: Mapping[str, float], teachers_per_step: int) -> float | None:
    """Cost of one KD step running ``teachers_per_step`` teachers, or None if the calibration has none."""
    return relative.get(kd_kind(teachers_per_step), relative.get("kd"))


def charged_steps(step: float, teachers_per_step: int, kd_stop_step: float, relative: Mapping[str, float]) -> float:
    """Baseline steps charged for a run's first ``step`` optimizer steps (KD before ``kd_stop_step``, plain after)."""
    base = relative.get("base", 1.0)
    if not teachers_per_step:
        return step * base
    cost = kd_step_cost(relative, teachers_per_step)
    if cost is None:
        raise KeyError(f"the calibration has no cost for a KD step with {teachers_per_step} teacher(s)")
    kd = min(step, kd_stop_step)
    return kd * cost + max(0.0, step - kd) * relative.get("post", base)
