"""The KD cutoff and the per-step teacher choice: pure functions of the optimizer step.

Being pure functions of ``(step, seed)`` is what makes them agree on every rank and after every resume
without any communication (``docs/design.md``, "The stop step" and "The KD objective").
"""

from __future__ import annotations

import logging
import math
import random
from fractions import Fraction

logger = logging.getLogger(__name__)

TEACHER_SELECTIONS = ("mean", "sample")


def resolve_kd_stop_step(
    max_steps: int, kd_stop_ratio: float | None = None, kd_stop_steps: int | None = None
) -> int:
    """First optimizer step *without* KD.

    ``kd_stop_steps`` wins when set (like ``warmup_steps`` over ``warmup_ratio``); else
    ``ceil(kd_stop_ratio * max_steps)``; neither set means KD for the whole run. A ``kd_stop_steps``
    beyond ``max_steps`` is allowed and means KD throughout (a warning says so).
    """
    if max_steps is None or max_steps <= 0:
        raise ValueError(f"max_steps={max_steps!r}: the KD stop step needs a positive number of training steps")
    if kd_stop_steps is not None:
        if kd_stop_steps > max_steps:
            logger.warning(
                "kd_stop_steps=%d is beyond max_steps=%d: KD stays on for the whole run", kd_stop_steps, max_steps
            )
        return int(kd_stop_steps)
    if kd_stop_ratio is None:
        return int(max_steps)
    return stop_step_from_ratio(kd_stop_ratio, max_steps)


def stop_step_from_ratio(kd_stop_ratio: float, max_steps: int) -> int:
    """``ceil(ratio * max_steps)`` in exact arithmetic on the ratio as written.

    In floats ``0.55 * 100`` is ``55.00000000000001`` and its ceil 56: one step late, and ``--kd_stop_steps 55``
    would then "disagree" with ``--kd_stop_ratio 0.55``. ``Fraction(str(0.55))`` is exactly 55/100.
    """
    return int(math.ceil(Fraction(str(kd_stop_ratio)) * int(max_steps)))


def kd_is_active(step: int, stop_step: int) -> bool:
    """KD is on for global steps ``0 .. stop_step - 1`` (the step being computed, before increment)."""
    return step < stop_step


def kd_weight(step: int, alpha: float, stop_step: int) -> float:
    """Weight of the KD term at ``step``: ``alpha`` while KD is on, 0 after the stop (logged as ``kd_weight``)."""
    return float(alpha) if kd_is_active(step, stop_step) else 0.0


def teachers_per_step(num_teachers: int, selection: str = "mean") -> int:
    """How many teachers run (or are produced for) at one KD step: all with ``"mean"``, one with ``"sample"``."""
    return num_teachers if selection == "mean" else min(1, num_teachers)


def teacher_indices(step: int, num_teachers: int, selection: str = "mean", seed: int = 0) -> list[int]:
    """Which teachers run at optimizer ``step``.

    ``"mean"``: all of them. ``"sample"``: one, drawn from ``random.Random(seed * 1_000_003 + step)`` -- a pure
    function of (seed, step), so all ranks and all micro-batches of a step, and a resumed run, agree.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers={num_teachers}: teacher selection needs at least one teacher")
    if selection == "mean":
        return list(range(num_teachers))
    if selection == "sample":
        return [random.Random(seed * 1_000_003 + step).randrange(num_teachers)]
    raise ValueError(f"kd_teacher_selection={selection!r} is not supported; expected one of {TEACHER_SELECTIONS}")
