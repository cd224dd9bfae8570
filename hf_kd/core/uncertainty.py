"""One uncertainty rule for every speed-up hf-kd prints: per-seed values, their 90% interval, and the verdict.

Speed-ups are ratios, so their statistics live in log space: the summary of per-seed speed-ups ``s_i`` is the
**geometric mean** ``exp(mean(log s_i))`` with the two-sided 90% Student-t interval computed on ``log s_i`` and
exponentiated back. Such an interval is always above zero, and "2x faster" and "2x slower" cancel exactly
(seeds at 0.5x and 2.0x give 1.00x, where an arithmetic mean would read 1.25x). Other quantities (losses,
accuracies, differences of them) use the arithmetic mean and interval.

The rule (stated in every report that draws a verdict):

* **REPRODUCED** when the whole interval lies above the null (1.0 for a speed-up);
* **not reproduced** when the whole interval lies below it;
* **inconclusive** otherwise, and always with one seed or with a seed that has no value.

How imperfect seeds enter:

* A value that is only a bound (the run ended beyond the best frontier point: ``>=``; or below the worst one:
  ``<=``) enters the interval as its bound, and may only support the verdict in its own direction.
* A seed that never reached its target (a paper-style speed-up that was "not reached") has no value. It is
  *not* dropped from a mean of the others: a summary with such a seed prints no mean and no interval, only
  "not reached on k of n seeds" and the reached seeds' values, and its verdict is inconclusive.

Used by ``hf-kd reproduce`` (its table, findings and regime study) and by the GLUE report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# t(0.95, df) for df = 1..30 (two-sided 90% interval); beyond 30 the normal quantile 1.645 is used.
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
        1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)
RULE = ("verdict rule: per-seed pairs (seed i vs seed i); speed-ups summarised by their geometric mean with a 90% "
        "Student-t interval on log speed-ups; REPRODUCED when the interval lies above 1.0, not reproduced when it "
        "lies below 1.0, inconclusive otherwise (always with 1 seed or a seed that never reached its target)")
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "not reproduced", "inconclusive"


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.645


@dataclass
class Spread:
    """Per-seed values with their summary; ``bounds[i]`` is ``"="``, ``">="`` or ``"<="``.

    ``log=True`` (speed-ups, ratios): ``mean`` is the geometric mean, ``std`` the sample std of the logs, and
    ``interval`` the exponentiated Student-t interval of the mean log. ``missing`` counts seeds without a value.
    """

    values: list[float]
    bounds: list[str] = field(default_factory=list)
    missing: int = 0
    log: bool = False

    def __post_init__(self):
        self.bounds = list(self.bounds) or ["="] * len(self.values)
        if self.log and any(v <= 0 for v in self.values):
            raise ValueError(f"a ratio must be positive to be summarised in log space, got {self.values}")

    @property
    def n(self) -> int:
        return len(self.values)

    def _scale(self) -> list[float]:
        return [math.log(v) for v in self.values] if self.log else list(self.values)

    @property
    def mean(self) -> float | None:
        """The geometric (``log``) or arithmetic mean; None when a seed has no value or no seed has one."""
        if not self.n or self.missing:
            return None
        m = sum(self._scale()) / self.n
        return math.exp(m) if self.log else m

    @property
    def std(self) -> float:
        """Sample std, of the logs when ``log`` (a spread factor ``exp(std)``)."""
        xs = self._scale()
        if len(xs) < 2:
            return 0.0
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.n < 2 or self.missing:
            return None
        xs = self._scale()
        m, half = sum(xs) / len(xs), t95(self.n - 1) * self.std / math.sqrt(self.n)
        return (math.exp(m - half), math.exp(m + half)) if self.log else (m - half, m + half)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci90": self.interval, "values": self.values,
                "bounds": self.bounds, "missing": self.missing, "log": self.log}


def spread_of(per_seed: list[tuple[float | None, str]], log: bool = False) -> Spread:
    """``Spread`` of ``(value, bound)`` pairs; ``None`` (or non-finite) values count as missing seeds."""
    kept = [(v, b or "=") for v, b in per_seed if v is not None and math.isfinite(v)]
    return Spread([v for v, _ in kept], [b for _, b in kept], missing=len(per_seed) - len(kept), log=log)


def speedup_spread(per_seed: list[tuple[float | None, str]]) -> Spread:
    """The summary of per-seed speed-ups: geometric mean and log-space interval."""
    return spread_of(per_seed, log=True)


def verdict(s: Spread, null: float | None = None) -> tuple[str, str]:
    """(verdict, reason) for the claim "the value is above ``null``" (1.0 for ratios, 0.0 otherwise by default)."""
    null = (1.0 if s.log else 0.0) if null is None else null
    if s.missing:
        return INCONCLUSIVE, f"{s.missing} of {s.n + s.missing} seeds without a value"
    if s.n < 2:
        return INCONCLUSIVE, f"{s.n} seed" if s.n == 1 else "no seeds"
    lo, hi = s.interval
    if lo > null and "<=" not in s.bounds:
        return REPRODUCED, f"90% interval [{lo:.2f}, {hi:.2f}] above {null:g}"
    if hi < null and ">=" not in s.bounds:
        return NOT_REPRODUCED, f"90% interval [{lo:.2f}, {hi:.2f}] below {null:g}"
    return INCONCLUSIVE, f"90% interval [{lo:.2f}, {hi:.2f}] contains {null:g}"


# The bound a ratio a / b (of positive values) inherits: a lower bound on a (or an upper bound on b) bounds the
# ratio from below.
_RATIO_BOUND = {("=", "="): "=", (">=", "="): ">=", ("=", "<="): ">=", (">=", "<="): ">=",
                ("<=", "="): "<=", ("=", ">="): "<=", ("<=", ">="): "<="}


def paired_ratio(a: list[tuple[float | None, str]], b: list[tuple[float | None, str]]) -> Spread:
    """Per-seed ``a_i / b_i`` of two speed-ups, in log space, with the bound it inherits; two bounds in the same
    direction give no value."""
    out = []
    for (x, bx), (y, by) in zip(a, b):
        bound = _RATIO_BOUND.get((bx or "=", by or "="))
        out.append((x / y, bound) if x is not None and y is not None and y > 0 and bound else (None, ""))
    return speedup_spread(out)


def _marked(v: float, bound: str, digits: int, speed: bool) -> str:
    text = f"{v:.{digits}f}x" if speed else f"{v:.{digits + 2}g}"
    return {">=": "≥", "<=": "≤"}.get(bound, "") + text


def format_spread(s: dict | Spread, speed: bool = True, digits: int = 2) -> str:
    """Speed-ups: ``1.12x ×/÷ 1.05 [0.98, 1.25]`` (geometric mean, geometric sd factor, 90% interval); other values
    ``mean ± sd [interval]``; a summary with seeds that never reached the target lists the reached values only."""
    d = s.to_dict() if isinstance(s, Spread) else s
    if d.get("missing"):
        n = d["n"] + d["missing"]
        reached = ", ".join(_marked(v, b, digits, speed) for v, b in zip(d["values"], d["bounds"]))
        return f"not reached on {d['missing']} of {n} seeds" + (f" (reached: {reached})" if reached else "")
    if d["mean"] is None:
        return "no value"
    bounds = set(d.get("bounds") or ["="])
    # Off the frontier's ends every seed's value is a bound, and so is their mean.
    text = _marked(d["mean"], next(iter(bounds)) if len(bounds) == 1 else "=", digits, speed)
    if d["n"] > 1:
        text += f" ×/÷ {math.exp(d['std']):.{digits}f}" if d.get("log") else f" ± {d['std']:.{digits}f}"
    if d.get("ci90"):
        text += f" [{d['ci90'][0]:.{digits}f}, {d['ci90'][1]:.{digits}f}]"
    if len(bounds - {"="}) and len(bounds) > 1:
        text += f" ({sum(b != '=' for b in d['bounds'])} of {d['n']} seeds a bound)"
    return text


def format_per_seed(s: dict) -> str:
    vals = [_marked(v, b, 2, True).rstrip("x") for v, b in zip(s["values"], s["bounds"])]
    return ", ".join(vals) + (f", {s['missing']}× not reached" if s.get("missing") else "")
