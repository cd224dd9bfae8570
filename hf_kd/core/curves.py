"""Quality-vs-cost curves, the two speed-up definitions, and their plot (``docs/design.md``, "Speed-ups").

Used once by everything that reports a speed-up: ``glue_eval.report``, the vision metrics and
``hf-kd reproduce``.

* **paper-style**: ``cost_baseline(final) / cost_run(q_baseline_final)``, where the run's cost is the
  *sustained* crossing -- the first point after which the run stays at or beyond the target; linear
  interpolation between evaluations; ``None`` ("not reached") when it never does.
* **budget frontier**: baselines trained with their own full schedules at several budgets give points
  (cost, final quality); cost is interpolated as a function of quality along them; a run's speed-up is
  ``frontier_cost(q_run_final) / cost_run_final``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Curve:
    """A quality curve: ``quality[i]`` measured after ``cost[i]`` (GPU-hours or steps), sorted by cost."""

    name: str
    cost: list[float]
    quality: list[float]
    higher_is_better: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.cost) != len(self.quality):
            raise ValueError(f"curve {self.name!r}: {len(self.cost)} costs but {len(self.quality)} qualities")
        pairs = sorted(zip(self.cost, self.quality))
        self.cost = [float(c) for c, _ in pairs]
        self.quality = [float(q) for _, q in pairs]

    @property
    def final_cost(self) -> float:
        return self.cost[-1]

    @property
    def final_quality(self) -> float:
        return self.quality[-1]


def _at_least(q: float, target: float, higher_is_better: bool) -> bool:
    return q >= target if higher_is_better else q <= target


def sustained_crossing_cost(curve: Curve, target: float) -> float | None:
    """Cost from which the curve stays at or beyond ``target`` until its end; ``None`` if its end is short.

    Between the last evaluation that misses the target and the next one, the cost is interpolated linearly.
    """
    hib = curve.higher_is_better
    if not curve.quality or not _at_least(curve.quality[-1], target, hib):
        return None
    i = len(curve.quality) - 1
    while i > 0 and _at_least(curve.quality[i - 1], target, hib):
        i -= 1
    if i == 0:
        return curve.cost[0]
    c0, c1 = curve.cost[i - 1], curve.cost[i]
    q0, q1 = curve.quality[i - 1], curve.quality[i]
    frac = (target - q0) / (q1 - q0) if q1 != q0 else 1.0
    return c0 + frac * (c1 - c0)


def paper_speedup(baseline: Curve, run: Curve) -> float | None:
    """Baseline's final cost / the run's sustained-crossing cost of the baseline's final quality."""
    c = sustained_crossing_cost(run, baseline.final_quality)
    if c is None:
        return None
    return math.inf if c <= 0 else baseline.final_cost / c


def frontier_cost(points: Sequence[tuple[float, float]], quality: float, higher_is_better: bool) -> float | None:
    """Cost the baseline frontier needs for ``quality``, interpolated along its (cost, quality) points.

    Between two points the interpolation is linear in *log* cost: over a range of budgets quality is close to
    linear in log-compute (the shape of every scaling-law fit), so cost grows geometrically along the frontier,
    and a straight line in cost between two points overstates what the frontier needs in between -- a bias that
    favours the run being compared (0.4-2 % on the checked-in reports). Non-positive costs fall back to
    linear. The frontier is made monotone first (a longer budget that ended worse is dominated). Returns
    ``None`` when ``quality`` is beyond the best frontier point (no extrapolation); the cheapest point's cost
    when ``quality`` is below the worst point.
    """
    pts = sorted((float(c), float(q)) for c, q in points)
    mono: list[tuple[float, float]] = []
    for c, q in pts:
        if not mono or (q > mono[-1][1] if higher_is_better else q < mono[-1][1]):
            mono.append((c, q))
    if not mono:
        return None
    if not _at_least(mono[-1][1], quality, higher_is_better):
        return None
    if _at_least(mono[0][1], quality, higher_is_better):
        return mono[0][0]
    for (c0, q0), (c1, q1) in zip(mono, mono[1:]):
        if _at_least(q1, quality, higher_is_better):
            f = (quality - q0) / (q1 - q0)
            if c0 > 0 and c1 > 0:
                return math.exp(math.log(c0) + f * (math.log(c1) - math.log(c0)))
            return c0 + f * (c1 - c0)
    return None


def frontier_speedup(frontier: Sequence[Curve], run: Curve) -> float | None:
    """``frontier_cost(q_run_final) / cost_run_final`` over baselines trained at several full budgets."""
    if not frontier:
        return None
    hib = frontier[0].higher_is_better
    c = frontier_cost([(b.final_cost, b.final_quality) for b in frontier], run.final_quality, hib)
    if c is None or run.final_cost <= 0:
        return None
    return c / run.final_cost


def frontier_speedup_bounded(frontier: Sequence[Curve], run: Curve) -> tuple[float | None, str]:
    """:func:`frontier_speedup` that also says what a value off the frontier's ends means.

    Returns ``(value, kind)``: ``"="`` inside the frontier; ``">="`` when the run ends beyond the best frontier
    point (the value, best point's cost / run cost, is a lower bound); ``"<="`` when it ends below the worst
    point (the cheapest point's cost / run cost is an upper bound); ``(None, "")`` without a frontier.
    """
    if not frontier or run.final_cost <= 0:
        return None, ""
    hib = frontier[0].higher_is_better
    pts = [(b.final_cost, b.final_quality) for b in frontier]
    best = max(pts, key=lambda p: p[1] if hib else -p[1])
    if not _at_least(best[1], run.final_quality, hib):
        return best[0] / run.final_cost, ">="
    cheapest = min(pts)
    value = frontier_speedup(frontier, run)
    if value is not None and _at_least(cheapest[1], run.final_quality, hib) and run.final_quality != cheapest[1]:
        return value, "<="
    return value, "="


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample std of the values that are not ``None`` (and their count)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s, len(vals)


def format_speedup(x: float | None) -> str:
    return "not reached" if x is None else ("inf" if math.isinf(x) else f"{x:.2f}x")


# -- reading curves from what runs write -------------------------------------------------------------
def curve_from_log_history(name: str, log_history: list[dict], quality_key: str = "eval_loss",
                           cost_key: str = "gpu_hours", higher_is_better: bool = False) -> Curve:
    """Pair each evaluation in a Trainer ``log_history`` with the latest cost logged at or before its step."""
    last_cost_by_step: dict[int, float] = {}
    for e in log_history:
        if cost_key in e:
            last_cost_by_step[int(e.get("step", 0))] = float(e[cost_key])
    cost, quality = [], []
    for e in log_history:
        if quality_key not in e:
            continue
        step = int(e.get("step", 0))
        if cost_key == "step":
            c = float(step)
        else:
            earlier = [s for s in last_cost_by_step if s <= step]
            if not earlier:
                continue
            c = last_cost_by_step[max(earlier)]
        cost.append(c)
        quality.append(float(e[quality_key]))
    return Curve(name=name, cost=cost, quality=quality, higher_is_better=higher_is_better)


def curve_from_trainer_state(path: str | Path, name: str | None = None, quality_key: str = "eval_loss",
                             cost_key: str = "gpu_hours", higher_is_better: bool = False) -> Curve:
    """Curve from a run dir / checkpoint dir / ``trainer_state.json`` (the newest checkpoint of a run dir)."""
    p = Path(path)
    if p.is_dir():
        if (p / "trainer_state.json").exists():
            p = p / "trainer_state.json"
        else:
            ckpts = sorted(p.glob("checkpoint-*/trainer_state.json"), key=lambda x: int(x.parent.name.split("-")[-1]))
            if not ckpts:
                raise FileNotFoundError(f"{path}: no trainer_state.json in it or in a checkpoint-* below it")
            p = ckpts[-1]
    state = json.loads(p.read_text())
    return curve_from_log_history(name or Path(path).name, state["log_history"], quality_key, cost_key,
                                  higher_is_better)


def curve_from_jsonl(path: str | Path, name: str | None = None, quality_key: str = "top1",
                     cost_key: str = "gpu_hours", higher_is_better: bool = True) -> Curve:
    """Curve from a JSON-lines metrics file (one evaluation per line), e.g. the vision ``metrics.jsonl``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if quality_key in r and cost_key in r]
    return Curve(name=name or Path(path).parent.name, cost=[r[cost_key] for r in rows],
                 quality=[r[quality_key] for r in rows], higher_is_better=higher_is_better)


def plot_curves(curves: Sequence[Curve], path: str | Path, xlabel: str = "GPU-hours", ylabel: str = "quality",
                title: str = "", baseline: str | None = None, target: float | None = None,
                spread: Mapping[str, Sequence[float]] | None = None, hlines: dict[str, float] | None = None) -> Path:
    """PNG of quality vs cost, one line per curve; the baseline drawn thick and black, the target dashed.

    ``spread`` (curve name -> one value per point, e.g. the std over seeds) draws a band of quality ± spread.
    ``hlines`` (label -> level) adds dotted horizontal reference lines, e.g. the unigram level and the teachers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for c in curves:
        is_base = c.name == baseline
        (line,) = ax.plot(c.cost, c.quality, marker="o", markersize=3, label=c.name,
                          color="black" if is_base else None, linewidth=2.5 if is_base else 1.5)
        if spread and c.name in spread:
            s = list(spread[c.name])
            ax.fill_between(c.cost, [q - d for q, d in zip(c.quality, s)], [q + d for q, d in zip(c.quality, s)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    if target is not None:
        ax.axhline(target, linestyle="--", color="grey", linewidth=1, label="baseline final")
    for i, (label, level) in enumerate((hlines or {}).items()):
        # colours no curve uses (curves take the C0..C9 cycle), so a level is not mistaken for a run
        ax.axhline(level, linestyle=":", linewidth=1.6, color=("black", "olive", "teal", "sienna")[i % 4], label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
