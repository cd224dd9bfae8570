"""The report's lines about recycled teacher outputs: the caches, the three cost views, cached vs live quality.

Views (:mod:`.costs`): **live** (the paper's protocol: a teacher forward per KD step), **amortised** (cached steps
plus each cached step's production split among the runs that read it; verdicts use it) and **sunk** (cached steps
only). Quality at equal steps compares ``kd_full`` (cached) with ``kd_full_live`` (the same run with a live
teacher), seed by seed.
"""

from __future__ import annotations

import statistics

from ..core.uncertainty import format_spread
from .costs import is_cached
from .protocol import LIVE_TWIN, RunRecord
from .table import VIEW_AXES, VariantRow

VIEWS = tuple(VIEW_AXES.items())  # (cost axis, view) in the order the table shows them


def cache_lines(results: dict) -> list[str]:
    """One line per teacher-output cache: what it holds, its size, what producing it cost, who read it."""
    readers: dict[str, list[str]] = {}
    for r in results["runs"]:
        if r.get("cache"):
            readers.setdefault(r["cache"], []).append(f"{r['variant']}")
    lines = []
    for name, m in (results.get("caches") or {}).items():
        who = sorted(set(readers.get(name, [])))
        lines.append(f"- teacher outputs `{name}`: teacher(s) {', '.join(m['teachers'])} ({m['selection']}), steps "
                     f"0..{m['steps'] - 1}, top-{m['top_k']} {m['logp_dtype']}, {m['bytes'] / 1e6:.1f} MB, produced "
                     f"in {m['producing_seconds']:.0f} s ({m['gpu_hours']:.5f} device-hours, {m['device_type']}); "
                     f"read by {', '.join(who) or 'no run'}")
    return lines


def _mean_sd(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):+.4f}{sd}"


def _evals(run: RunRecord, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in run.log_history if key in e and "step" in e}


def cached_vs_live(runs: list[RunRecord], metric: dict) -> str:
    """Quality of ``kd_full`` (cached) minus ``kd_full_live`` at equal steps, seed by seed, or "" without pairs."""
    by = {(r.variant, r.seed): r for r in runs}
    pairs = [(by[("kd_full", s)], by[(LIVE_TWIN, s)]) for (v, s) in sorted(by)
             if v == "kd_full" and (LIVE_TWIN, s) in by and is_cached(by[("kd_full", s)])]
    if not pairs:
        return ""
    key = metric["key"]
    finals, every = [], []
    for cached, live in pairs:
        a, b = _evals(cached, key), _evals(live, key)
        common = sorted(set(a) & set(b))
        finals.append(a[common[-1]] - b[common[-1]])
        every.extend(a[s] - b[s] for s in common)
    seeds = [c.seed for c, _ in pairs]
    return (f"Cached vs live teacher at equal steps (kd_full vs {LIVE_TWIN}, seeds {seeds}; cached − live, mean ± sd "
            f"over seeds): final {metric['label']} {_mean_sd(finals)}; over all {len(every)} paired evaluations "
            f"{_mean_sd(every)} (largest |difference| {max(abs(x) for x in every):.4f}).\n\n")


def cost_views_section(table: dict[str, VariantRow], runs: list[RunRecord], metric: dict) -> str:
    """The section (markdown) for a report with cached runs, else ""."""
    if not any(is_cached(r) for r in runs):
        return ""
    with_teachers = {r.variant for r in runs if r.teachers}
    kd = [n for n in table if n in with_teachers]
    head = ("| variant | " + " | ".join(f"cost, {v}" for _, v in VIEWS) + " | "
            + " | ".join(f"frontier, {v}" for _, v in VIEWS) + " | verdict live / amortised / sunk |")
    lines = [head, "|" + "---|" * 8]
    for n in kd:
        r = table[n]
        costs = [f"{r.stats[a.replace('calibrated', 'calibrated_cost')]['mean']:.0f}" for a, _ in VIEWS]
        fronts = [format_spread(r.frontier[a]) for a, _ in VIEWS]
        verdicts = " / ".join([r.view_verdicts.get("live", ""), r.verdict, r.view_verdicts.get("sunk", "")])
        lines.append(f"| {n} | " + " | ".join(costs + fronts) + f" | {verdicts} |")
    return ("## Cost views of KD with recycled teacher outputs\n\n"
            "Calibrated cost (baseline steps) and budget-frontier speed-up of each KD variant under three views: "
            "**live** = the same steps with a teacher forward at every KD step (the paper's protocol); **amortised** "
            "= cached KD steps plus each cached step's production cost split among the runs that read it (the "
            "verdicts above use this view); **sunk** = cached KD steps only, production paid like the teacher's "
            f"training. {LIVE_TWIN} trained with a live teacher: all its views are its live cost.\n\n"
            + "\n".join(lines) + "\n\n" + cached_vs_live(runs, metric))
