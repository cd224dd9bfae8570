"""Each run's speed-up over the baseline, per seed, summarised and judged by the project's one uncertainty rule.

Seed *i* of a run is paired with seed *i* of the baseline (and of the frontier runs); each pair gives a
paper-style and a budget-frontier speed-up (``hf_kd.core.curves``); the per-seed values are summarised by
``hf_kd.core.uncertainty``: geometric mean, 90% interval on log speed-ups, and the verdict REPRODUCED / not
reproduced / inconclusive (always inconclusive with one seed or with a seed that never reached the target).
No speed-up is printed without its verdict. A paper-style crossing at the run's first evaluated checkpoint is
a lower bound (the run may have got there earlier), marked ``≥``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_kd.core.curves import Curve, frontier_speedup_bounded, paper_speedup, sustained_crossing_cost
from hf_kd.core.uncertainty import INCONCLUSIVE, Spread, format_spread, speedup_spread, verdict

from .quality import mean_curves, seed_curves


@dataclass
class Judged:
    """One speed-up definition for one run: per-seed values, their summary text and the verdict."""

    per_seed: list[float | None]
    bounds: list[str]
    summary: dict
    text: str
    verdict: str
    reason: str

    @classmethod
    def of(cls, pairs: list[tuple[float | None, str]]) -> Judged:
        s: Spread = speedup_spread(pairs)
        v, why = verdict(s)
        return cls([v for v, _ in pairs], [b for _, b in pairs], s.to_dict(), format_spread(s), v, why)

    @classmethod
    def none(cls, why: str) -> Judged:
        return cls([], [], {}, why, INCONCLUSIVE, why)

    @property
    def cell(self) -> str:
        return f"**{self.verdict}** ({self.reason})"


@dataclass
class SpeedupRow:
    run: str
    axis: str
    target: float | None
    crossing_cost: float | None  # where the seed-mean curve reaches the target: a cost, not a speed-up
    seeds: list
    paper: Judged
    frontier: Judged | None = None
    no_signal: str = ""

    def flat(self) -> dict:
        """One CSV row: the texts, verdicts and geometric means, no per-seed lists."""
        out = {"run": self.run, "axis": self.axis, "target": self.target, "crossing_cost": self.crossing_cost,
               "seeds": len(self.seeds), "no_signal": self.no_signal}
        for name, j in (("paper", self.paper), ("frontier", self.frontier)):
            if j is not None:
                out.update({name: j.text, f"{name}_speedup": j.summary.get("mean"), f"{name}_verdict": j.verdict,
                            f"{name}_ci90": j.summary.get("ci90")})
        return out


def _paper_pair(base: Curve, run: Curve) -> tuple[float | None, str]:
    value = paper_speedup(base, run)
    first = sustained_crossing_cost(run, base.final_quality) == run.cost[0] if value is not None else False
    return value, ">=" if first else "="


@dataclass
class SpeedupInputs:
    """What :func:`speedup_rows` needs: the table's rows and points on one cost axis, and the runs' roles."""

    rows: list
    points: list
    baseline: str
    frontier: list[str] = field(default_factory=list)
    higher_is_better: bool = True


def speedup_rows(inp: SpeedupInputs, axis: str, no_signal: str = "") -> list[SpeedupRow]:
    """Per non-baseline, non-frontier run: paper-style and (with frontier runs) budget-frontier speed-ups."""
    means, seeds = mean_curves(inp.rows, inp.higher_is_better), seed_curves(inp.points, inp.higher_is_better)
    base = means[inp.baseline]
    out = []
    for run, curve in means.items():
        if run == inp.baseline or run in inp.frontier:
            continue
        common = [s for s in seeds[run] if s in seeds[inp.baseline]]
        row = SpeedupRow(run, axis, base.final_quality, sustained_crossing_cost(curve, base.final_quality), common,
                         Judged.none(no_signal) if no_signal else
                         Judged.of([_paper_pair(seeds[inp.baseline][s], seeds[run][s]) for s in common]),
                         no_signal=no_signal)
        if inp.frontier:
            fs = [s for s in common if all(s in seeds[f] for f in inp.frontier)]
            row.frontier = Judged.none(no_signal) if no_signal else Judged.of(
                [frontier_speedup_bounded([seeds[f][s] for f in inp.frontier], seeds[run][s]) for s in fs])
        out.append(row)
    return out
