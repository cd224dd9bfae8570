"""The speed-up table of a protocol run: per variant and seed, final qualities, costs and speed-ups on each cost
axis, summarised over seeds with the rule of :mod:`hf_kd.core.uncertainty` (typed rows; ``to_dict`` is the
``summary`` results.json keeps).

Curve and speed-up math is :mod:`hf_kd.core.curves`; the calibrated axis is :mod:`hf_kd.reproduce.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.curves import Curve, curve_from_log_history, frontier_speedup_bounded, paper_speedup
from ..core.uncertainty import speedup_spread, spread_of, verdict
from .costs import CostModel, is_cached
from .protocol import Calibration, RunRecord

AXES = {"gpu_hours": "GPU-hours (measured)", "calibrated": "calibrated cost (baseline steps)", "step": "steps"}
# With cached teacher outputs the calibrated axis is the amortised view (``costs.VIEWS``); these are the others.
VIEW_AXES = {"calibrated_live": "live", "calibrated": "amortised", "calibrated_sunk": "sunk"}
Bounded = tuple  # (speed-up or None, bound "=" / ">=" / "<=")
# What "quality" means per task: the headline key, its direction, and a secondary key shown in the table.
METRICS = {
    "mlm": {"key": "eval_loss", "higher_is_better": False, "label": "held-out MLM loss", "secondary": "eval_accuracy",
             "secondary_label": "masked acc.", "unigram_of": "masked tokens'"},
    "clm": {"key": "eval_loss", "higher_is_better": False, "label": "held-out next-token loss",
            "secondary": "eval_accuracy", "secondary_label": "next-token acc.", "unigram_of": "next tokens'"},
    "vision": {"key": "top1", "higher_is_better": True, "label": "top-1 accuracy", "secondary": "top5",
               "secondary_label": "top-5"},
}
TEXT = METRICS["mlm"]


def axes_of(calibration: Calibration | None) -> list[str]:
    return [a for a in AXES if a != "calibrated" or calibration]


def has_cached(runs: list[RunRecord]) -> bool:
    return any(is_cached(r) for r in runs)


def all_axes(calibration: Calibration | None, runs: list[RunRecord]) -> list[str]:
    """:func:`axes_of`, plus the live and sunk views when a calibrated report has cached runs."""
    extra = ["calibrated_live", "calibrated_sunk"] if calibration and has_cached(runs) else []
    return axes_of(calibration) + extra


def verdict_axis(calibration: Calibration | None) -> str:
    """The cost axis verdicts are drawn on: the calibrated one when there is a calibration."""
    return "calibrated" if calibration else "gpu_hours"


def curve(run: RunRecord, cost: str, metric: dict, costs: CostModel | None = None) -> Curve:
    """``run``'s quality against ``cost``: a logged key, or a calibrated view (``VIEW_AXES``) of ``costs``."""
    key = "step" if cost in VIEW_AXES else cost
    c = curve_from_log_history(run.variant, run.log_history, metric["key"], key, metric["higher_is_better"])
    if cost in VIEW_AXES:
        c = Curve(c.name, [costs.cost(run, s, VIEW_AXES[cost]) for s in c.cost], c.quality, c.higher_is_better)
    return c


def final(run: RunRecord, key: str) -> float | None:
    vals = [e[key] for e in run.log_history if key in e]
    return vals[-1] if vals else None


@dataclass
class SeedEntry:
    """One variant at one seed (speed-ups against that seed's baselines)."""

    seed: int
    final_quality: float | None
    final_secondary: float | None
    gpu_hours: float
    steps: int
    teacher_forwards: int
    calibrated_cost: dict[str, float]  # calibrated axis (``VIEW_AXES``) -> the run's final cost on it
    paper: dict[str, Bounded]  # cost axis -> paper-style speed-up
    frontier: dict[str, Bounded]  # cost axis -> budget-frontier speed-up

    def plain(self) -> dict[str, float | None]:
        out = {"final_quality": self.final_quality, "final_secondary": self.final_secondary,
               "gpu_hours": self.gpu_hours, "steps": self.steps, "teacher_forwards": self.teacher_forwards}
        for axis, cost in self.calibrated_cost.items():
            out[axis.replace("calibrated", "calibrated_cost")] = cost
        return out

    def to_dict(self) -> dict:
        out = {"seed": self.seed, **self.plain()}
        for axis in self.paper:
            out[f"paper_speedup_{axis}"], out[f"frontier_speedup_{axis}"] = self.paper[axis], self.frontier[axis]
        return out


@dataclass
class VariantRow:
    """One variant over seeds: each value's spread (``Spread.to_dict()``), its verdict and why."""

    role: str
    per_seed: list[SeedEntry]
    stats: dict[str, dict]  # final_quality, final_secondary, gpu_hours, steps, teacher_forwards[, calibrated_cost]
    paper: dict[str, dict]  # cost axis -> spread of the paper-style speed-ups
    frontier: dict[str, dict]  # cost axis -> spread of the budget-frontier speed-ups
    verdict: str = ""
    verdict_reason: str = ""
    view_verdicts: dict[str, str] = field(default_factory=dict)  # live / sunk cost views' verdicts (cached runs)

    @property
    def final_quality(self) -> dict:
        return self.stats["final_quality"]

    def to_dict(self) -> dict:
        out = {"role": self.role, "per_seed": [e.to_dict() for e in self.per_seed], **self.stats}
        for axis in self.paper:
            out[f"paper_speedup_{axis}"], out[f"frontier_speedup_{axis}"] = self.paper[axis], self.frontier[axis]
        return {**out, "verdict": self.verdict, "verdict_reason": self.verdict_reason,
                **({"view_verdicts": self.view_verdicts} if self.view_verdicts else {})}


def _seed_entry(seed: int, r: RunRecord, base: RunRecord, frontier: list[RunRecord], metric: dict,
                costs: CostModel | None, axes: list[str]) -> SeedEntry:
    paper, front = {}, {}
    for axis in axes:
        c = curve(r, axis, metric, costs)
        # The baseline's paper-style speed-up is 1.00x by definition (its own target); computing it can give
        # e.g. 1.02x when an earlier evaluation already equalled its final quality.
        paper[axis] = (1.0, "=") if r is base else (paper_speedup(curve(base, axis, metric, costs), c), "=")
        front[axis] = frontier_speedup_bounded([curve(f, axis, metric, costs) for f in frontier], c)
    calibrated = {a: costs.cost(r, r.steps, VIEW_AXES[a]) for a in axes if a in VIEW_AXES}
    return SeedEntry(seed, final(r, metric["key"]), final(r, metric["secondary"]),
                     curve(r, "gpu_hours", metric).final_cost, r.steps, r.teacher_forwards, calibrated, paper, front)


def _row(role: str, entries: list[SeedEntry], calibration: Calibration | None) -> VariantRow:
    stats = {k: spread_of([(e.plain()[k], "=") for e in entries]).to_dict() for k in entries[0].plain()}
    paper = {a: speedup_spread([e.paper[a] for e in entries]).to_dict() for a in entries[0].paper}
    frontier = {a: speedup_spread([e.frontier[a] for e in entries]).to_dict() for a in entries[0].frontier}
    v, why = verdict(speedup_spread([e.frontier[verdict_axis(calibration)] for e in entries]))
    views = {VIEW_AXES[a]: verdict(speedup_spread([e.frontier[a] for e in entries]))[0]
             for a in ("calibrated_live", "calibrated_sunk") if a in entries[0].frontier}
    return VariantRow(role, entries, stats, paper, frontier, v, why, views)


def speedups(runs: list[RunRecord], metric: dict = TEXT, calibration: Calibration | None = None) -> dict[str, VariantRow]:
    """Per variant: per-seed speed-ups (seed i vs seed i), their spreads and verdicts, and final qualities."""
    costs = CostModel(calibration, runs) if calibration else None
    axes = all_axes(calibration, runs)
    by_seed: dict[int, dict[str, RunRecord]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, {})[r.variant] = r
    entries: dict[str, tuple[str, list[SeedEntry]]] = {}
    for seed, rs in sorted(by_seed.items()):
        base = rs["baseline"]
        frontier = [r for r in rs.values() if r.role == "frontier"] + [base]
        for name, r in rs.items():
            entries.setdefault(name, (r.role, []))[1].append(_seed_entry(seed, r, base, frontier, metric, costs, axes))
    return {name: _row(role, es, calibration) for name, (role, es) in entries.items()}
