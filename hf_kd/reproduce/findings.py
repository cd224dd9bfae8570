"""The paper's findings, each read off the per-seed speed-ups with the rule of :mod:`hf_kd.core.uncertainty`.

A finding about which KD variant is *more* efficient is only drawn among variants that beat the baseline
(verdict REPRODUCED): when none speeds training up, ranking them is meaningless, and the finding says so.
"""

from __future__ import annotations

from ..core.uncertainty import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    format_spread,
    paired_ratio,
    speedup_spread,
    verdict,
)
from .table import VariantRow, verdict_axis

KD_MAIN = ("kd_full", "kd_stop25", "kd_stop50")
EARLY = ("kd_stop25", "kd_stop50")


def _per_seed(table: dict[str, VariantRow], name: str, axis: str) -> list:
    return [e.frontier[axis] for e in table[name].per_seed]


def _beats(table: dict[str, VariantRow], names) -> tuple[list[str], list[str]]:
    present = [n for n in names if n in table]
    return [n for n in present if table[n].verdict == REPRODUCED], [n for n in present
                                                                   if table[n].verdict != REPRODUCED]


def _why_not(table: dict[str, VariantRow], names: list[str]) -> str:
    return "; ".join(f"{n} is {table[n].verdict} against the baseline" for n in names)


def _compare(table: dict[str, VariantRow], a: str, b: str, axis: str) -> tuple[str, str]:
    """Is ``a``'s speed-up above ``b``'s? Paired per-seed ratios in log space, the same interval rule around 1."""
    ratio = paired_ratio(_per_seed(table, a, axis), _per_seed(table, b, axis))
    v, why = verdict(ratio)
    return v, f"{a} / {b} = {format_spread(ratio)} ({why})"


def _speedup_finding(table: dict[str, VariantRow], axis: str) -> dict:
    kd = [n for n in KD_MAIN if n in table] or [n for n, r in table.items()
                                                if r.role == "student" and n != "baseline"]
    vs = {n: table[n].verdict for n in kd}
    if any(v == REPRODUCED for v in vs.values()):
        v = REPRODUCED
    elif vs and all(v == NOT_REPRODUCED for v in vs.values()):
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    ev = "; ".join(f"{n} {format_spread(table[n].frontier[axis])}: {vs[n]}" for n in kd)
    return {"finding": "KD speeds up training (same quality for less cost than the budget frontier)",
            "verdict": v, "evidence": ev or "no KD variant was run"}


def _early_finding(table: dict[str, VariantRow], axis: str) -> dict | None:
    early = [n for n in EARLY if n in table]
    if not early or "kd_full" not in table:
        return None
    claim = "Stopping KD early is more efficient than KD throughout"
    winners, losers = _beats(table, early + ["kd_full"])
    if "kd_full" not in winners or not any(n in winners for n in early):
        return {"finding": claim, "verdict": "not drawn",
                "evidence": f"a comparison needs variants that beat the baseline: {_why_not(table, losers)}"}
    results = [_compare(table, n, "kd_full", axis) for n in early if n in winners]
    order = (REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED)
    v = min((r[0] for r in results), key=order.index)
    return {"finding": claim, "verdict": v, "evidence": "; ".join(r[1] for r in results)}


def _poor_finding(table: dict[str, VariantRow], axis: str, metric: dict) -> dict | None:
    if "kd_poor_teacher" not in table:
        return None
    r = table["kd_poor_teacher"]
    return {"finding": "Even a poor teacher helps", "verdict": r.verdict,
            "evidence": f"kd_poor_teacher frontier speed-up {format_spread(r.frontier[axis])}; final "
                        f"{metric['label']} {format_spread(r.final_quality, speed=False)} vs baseline "
                        f"{format_spread(table['baseline'].final_quality, speed=False)}"}


def _ensemble_finding(table: dict[str, VariantRow], axis: str) -> dict | None:
    if "ensemble_mean" not in table or "ensemble_sample" not in table:
        return None
    claim = "Sampling one teacher per step is at least as efficient as the ensemble mean (1/n the teacher cost)"
    fwd = (f"teacher forwards {table['ensemble_sample'].stats['teacher_forwards']['mean']:.0f} vs "
           f"{table['ensemble_mean'].stats['teacher_forwards']['mean']:.0f}")
    if "calibrated_cost_sunk" in table["ensemble_mean"].stats:  # teacher outputs recycled: no forward in training
        fwd = ("teacher outputs cached: producing them ran 1 teacher per step for ensemble_sample and every teacher "
               "for ensemble_mean (charged in the amortised cost); reading them costs the same")
    winners, losers = _beats(table, ["ensemble_sample", "ensemble_mean"])
    if len(winners) < 2:
        return {"finding": claim, "verdict": "not drawn",
                "evidence": f"a comparison needs variants that beat the baseline: {_why_not(table, losers)}; {fwd}"}
    s = speedup_spread(_per_seed(table, "ensemble_sample", axis))
    m = speedup_spread(_per_seed(table, "ensemble_mean", axis))
    v, ev = _compare(table, "ensemble_sample", "ensemble_mean", axis)
    if v == INCONCLUSIVE and s.mean is not None and m.mean is not None and s.mean >= m.mean:
        ev += " (not worse on average, but not separated from it either)"
    return {"finding": claim, "verdict": v, "evidence": f"{ev}; {fwd}"}


def findings(table: dict[str, VariantRow], metric: dict, calibration=None) -> list[dict]:
    """Each finding: its claim, its verdict (REPRODUCED / not reproduced / inconclusive / not drawn), evidence."""
    axis = verdict_axis(calibration)
    out = [_speedup_finding(table, axis), _early_finding(table, axis), _poor_finding(table, axis, metric),
           _ensemble_finding(table, axis)]
    return [f for f in out if f is not None]
