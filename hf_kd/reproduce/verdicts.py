"""Verdicts that can say "inconclusive": per-seed speed-ups, their 90% interval, and the rule that reads them.

The rule (stated in every report): a speed-up is measured once per seed, seed ``i`` of a variant against seed
``i`` of the baselines. Over the ``n`` seeds we take the mean and the two-sided 90% Student-t interval
``mean ± t(0.95, n-1) * sd / sqrt(n)``.

* **REPRODUCED** when the whole interval lies above 1.0 (the variant is faster than the baselines);
* **not reproduced** when the whole interval lies below 1.0 (it is slower: the claim's opposite);
* **inconclusive** otherwise, and always with one seed.

A per-seed value that is only a bound (the run ended beyond the best frontier point: ``>=``; or below the
worst one: ``<=``) enters the interval as its bound, and may only support the verdict in its own direction.
A comparison between KD variants is drawn only among variants whose own verdict is REPRODUCED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# t(0.95, df) for df = 1..30 (two-sided 90% interval); beyond 30 the normal quantile 1.645 is used.
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
        1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)
RULE = ("verdict rule: per-seed pairs (seed i vs seed i); REPRODUCED when the 90% Student-t interval of the mean "
        "speed-up lies above 1.0, not reproduced when it lies below 1.0, inconclusive otherwise (always with 1 seed)")
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "not reproduced", "inconclusive"


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.645


@dataclass
class Spread:
    """Mean, sample std and 90% interval of per-seed values; ``bounds[i]`` is ``"="``, ``">="`` or ``"<="``."""

    values: list[float]
    bounds: list[str] = field(default_factory=list)
    missing: int = 0  # seeds without any value (e.g. a paper-style speed-up that was never reached)

    def __post_init__(self):
        self.bounds = list(self.bounds) or ["="] * len(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.n else None

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        half = t95(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci90": self.interval, "values": self.values,
                "bounds": self.bounds, "missing": self.missing}


def spread_of(per_seed: list[tuple[float | None, str]]) -> Spread:
    """``Spread`` of ``(value, bound)`` pairs; ``None`` values count as missing."""
    kept = [(v, b or "=") for v, b in per_seed if v is not None and math.isfinite(v)]
    return Spread([v for v, _ in kept], [b for _, b in kept], missing=len(per_seed) - len(kept))


def verdict(s: Spread, null: float = 1.0) -> tuple[str, str]:
    """(verdict, reason) for the claim "the value is above ``null``" under the module's rule."""
    if s.missing:
        return INCONCLUSIVE, f"{s.missing} seed(s) without a value"
    if s.n < 2:
        return INCONCLUSIVE, f"{s.n} seed" if s.n == 1 else "no seeds"
    lo, hi = s.interval
    if lo > null and "<=" not in s.bounds:
        return REPRODUCED, f"90% interval [{lo:.2f}, {hi:.2f}] above {null:g}"
    if hi < null and ">=" not in s.bounds:
        return NOT_REPRODUCED, f"90% interval [{lo:.2f}, {hi:.2f}] below {null:g}"
    return INCONCLUSIVE, f"90% interval [{lo:.2f}, {hi:.2f}] contains {null:g}"


# The bound a difference a - b inherits: a lower bound on a (or an upper bound on b) bounds a - b from below.
_DIFF_BOUND = {("=", "="): "=", (">=", "="): ">=", ("=", "<="): ">=", (">=", "<="): ">=",
               ("<=", "="): "<=", ("=", ">="): "<=", ("<=", ">="): "<="}


def paired_difference(a: list[tuple[float | None, str]], b: list[tuple[float | None, str]]) -> Spread:
    """Per-seed ``a_i - b_i`` with the bound it inherits; two bounds in the same direction give no value."""
    out = []
    for (x, bx), (y, by) in zip(a, b):
        bound = _DIFF_BOUND.get((bx or "=", by or "="))
        out.append((x - y, bound) if x is not None and y is not None and bound else (None, ""))
    return spread_of(out)


def format_spread(s: dict | Spread, speed: bool = True, digits: int = 2) -> str:
    """``1.12x ± 0.05 [0.98, 1.25]`` (mean ± sd [90% interval]); ``not reached`` when no seed has a value."""
    d = s.to_dict() if isinstance(s, Spread) else s
    if d["mean"] is None:
        return "not reached"
    fmt = (lambda v: f"{v:.{digits}f}x") if speed else (lambda v: f"{v:.{digits + 2}g}")
    bounds = set(d.get("bounds") or ["="])
    # Off the frontier's ends every seed's value is a bound, and so is their mean.
    text = ("≥" if bounds == {">="} else "≤" if bounds == {"<="} else "") + fmt(d["mean"])
    if d["n"] > 1:
        text += f" ± {d['std']:.{digits}f}"
    if d.get("ci90"):
        text += f" [{d['ci90'][0]:.{digits}f}, {d['ci90'][1]:.{digits}f}]"
    if d.get("missing"):
        text += f" ({d['missing']} not reached)"
    if len(bounds - {"="}) and len(bounds) > 1:
        text += f" ({sum(b != '=' for b in d['bounds'])} of {d['n']} seeds a bound)"
    return text


def format_per_seed(s: dict) -> str:
    marks = {">=": "≥", "<=": "≤"}
    vals = [f"{marks.get(b, '')}{v:.2f}" for v, b in zip(s["values"], s["bounds"])]
    return ", ".join(vals) + (f", {s['missing']}× not reached" if s.get("missing") else "")
