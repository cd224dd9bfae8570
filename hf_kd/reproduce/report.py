"""Turn ``hf-kd reproduce`` runs into speed-ups, a table, plots and a verdict per paper finding.

All curve/speed-up/plot math is :mod:`hf_kd.core.curves` (shared with ``glue_eval.report``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.curves import (
    Curve,
    curve_from_log_history,
    format_speedup,
    frontier_speedup,
    mean_std,
    paper_speedup,
    plot_curves,
)

logger = logging.getLogger(__name__)
COSTS = {"gpu_hours": "GPU-hours", "step": "steps"}
# What "quality" means per task: the headline key, its direction, and a secondary key shown in the table.
METRICS = {
    "text": {"key": "eval_loss", "higher_is_better": False, "label": "held-out MLM loss", "secondary": "eval_accuracy",
             "secondary_label": "masked acc."},
    "vision": {"key": "top1", "higher_is_better": True, "label": "top-1 accuracy", "secondary": "top5",
               "secondary_label": "top-5"},
}
TEXT = METRICS["text"]


def _curve(run: dict, cost: str, metric: dict) -> Curve:
    return curve_from_log_history(run["variant"], run["log_history"], metric["key"], cost,
                                  metric["higher_is_better"])


def _better(a: float, b: float, metric: dict) -> bool:
    """``a`` at least as good as ``b`` in the metric's direction."""
    return a >= b if metric["higher_is_better"] else a <= b


def _final(run: dict, key: str) -> float | None:
    vals = [e[key] for e in run["log_history"] if key in e]
    return vals[-1] if vals else None


def speedups(runs: list[dict], metric: dict = TEXT) -> dict[str, dict]:
    """Per variant: speed-ups (paper-style and budget frontier; GPU-hours and steps) per seed, and finals."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["variant"]] = r
    table: dict[str, dict] = {}
    for seed, rs in sorted(by_seed.items()):
        base = rs["baseline"]
        frontier_runs = [r for r in rs.values() if r["role"] == "frontier"] + [base]
        for name, r in rs.items():
            row = table.setdefault(name, {"role": r["role"], "per_seed": []})
            entry = {"seed": seed, "final_quality": _final(r, metric["key"]),
                     "final_secondary": _final(r, metric["secondary"]),
                     "gpu_hours": _curve(r, "gpu_hours", metric).final_cost, "steps": r["steps"],
                     "teacher_forwards": r["teacher_forwards"]}
            for cost in COSTS:
                entry[f"paper_speedup_{cost}"] = paper_speedup(_curve(base, cost, metric), _curve(r, cost, metric))
                entry[f"frontier_speedup_{cost}"] = frontier_speedup([_curve(f, cost, metric) for f in frontier_runs],
                                                                     _curve(r, cost, metric))
            row["per_seed"].append(entry)
    for row in table.values():
        for k in row["per_seed"][0]:
            if k != "seed":
                m, s, n = mean_std([e[k] for e in row["per_seed"]])
                row[k] = {"mean": m, "std": s, "n": n}
    return table


def _fmt(stat: dict, speed: bool = False, digits: int = 3) -> str:
    m, s, n = stat["mean"], stat["std"], stat["n"]
    if m is None:
        return "not reached"
    text = format_speedup(m) if speed else f"{m:.{digits}g}"
    return text + (f" ± {s:.2f}" if n > 1 else "")


def markdown_table(table: dict[str, dict], metric: dict = TEXT) -> str:
    head = (f"| variant | final {metric['label']} | {metric['secondary_label']} | GPU-hours | teacher fwd | "
            "paper speed-up (GPU-h) | paper (steps) | frontier speed-up (GPU-h) | frontier (steps) |")
    lines = [head, "|" + "---|" * 9]
    for name, r in table.items():
        lines.append(f"| {name} | {_fmt(r['final_quality'], digits=4)} | {_fmt(r['final_secondary'])} | "
                     f"{_fmt(r['gpu_hours'])} | {_fmt(r['teacher_forwards'])} | "
                     f"{_fmt(r['paper_speedup_gpu_hours'], True)} | {_fmt(r['paper_speedup_step'], True)} | "
                     f"{_fmt(r['frontier_speedup_gpu_hours'], True)} | {_fmt(r['frontier_speedup_step'], True)} |")
    return "\n".join(lines)


def _m(table, name, key):
    return table.get(name, {}).get(key, {}).get("mean")


def findings(table: dict[str, dict], metric: dict = TEXT) -> list[dict]:
    """The paper's four findings, each with reproduced True/False/None (not run) and the evidence."""
    kd = [n for n, r in table.items() if r["role"] == "student" and n != "baseline"]
    out = []
    best = max(kd, key=lambda n: _m(table, n, "frontier_speedup_gpu_hours") or 0.0, default=None)
    s = _m(table, best, "frontier_speedup_gpu_hours") if best else None
    out.append({"finding": "KD speeds up training (same quality for fewer GPU-hours)", "reproduced": bool(s and s > 1),
                "evidence": f"best variant {best}: budget-frontier speed-up {format_speedup(s)}, paper-style "
                            f"{format_speedup(_m(table, best, 'paper_speedup_gpu_hours'))}"})
    early = [n for n in ("kd_stop25", "kd_stop50") if n in table]
    if early and "kd_full" in table:
        # The paper's claim is about efficiency (KD for the first 20-50% gives the best speed-up), so compare the
        # budget-frontier speed-up in GPU-hours; final quality is shown as evidence.
        e_best = max(early, key=lambda n: _m(table, n, "frontier_speedup_gpu_hours") or 0.0)
        es, fs = _m(table, e_best, "frontier_speedup_gpu_hours"), _m(table, "kd_full", "frontier_speedup_gpu_hours")
        out.append({"finding": "Stopping KD early is at least as efficient as KD throughout",
                    "reproduced": es is not None and (fs is None or es >= fs),
                    "evidence": f"{e_best} budget-frontier speed-up {format_speedup(es)} vs kd_full "
                                f"{format_speedup(fs)}; final {metric['label']} "
                                f"{_m(table, e_best, 'final_quality'):.4f} vs {_m(table, 'kd_full', 'final_quality'):.4f}"})
    if "kd_poor_teacher" in table:
        pl, bl = _m(table, "kd_poor_teacher", "final_quality"), _m(table, "baseline", "final_quality")
        out.append({"finding": "Even a poor teacher helps", "reproduced": _better(pl, bl, metric) and pl != bl,
                    "evidence": f"poor-teacher KD final {metric['label']} {pl:.4f} vs baseline {bl:.4f}"})
    if "ensemble_mean" in table and "ensemble_sample" in table:
        sl, ml = _m(table, "ensemble_sample", "final_quality"), _m(table, "ensemble_mean", "final_quality")
        bl = _m(table, "baseline", "final_quality")
        sf, mf = _m(table, "ensemble_sample", "teacher_forwards"), _m(table, "ensemble_mean", "teacher_forwards")
        close = abs(sl - ml) <= 0.5 * max(abs(bl - ml), 1e-9) or _better(sl, ml, metric)
        out.append({"finding": "Sampling one teacher per step ~ the ensemble mean at 1/n the teacher cost",
                    "reproduced": close and sf < mf,
                    "evidence": f"sample {sl:.4f} vs mean {ml:.4f} (baseline {bl:.4f}); teacher forwards "
                                f"{sf:.0f} vs {mf:.0f}"})
    return out


def plots(runs: list[dict], out: Path, metric: dict = TEXT) -> list[str]:
    seed0 = [r for r in runs if r["seed"] == 0]
    base = next(r for r in seed0 if r["variant"] == "baseline")
    target = _final(base, metric["key"])
    paths = []
    for cost, label in COSTS.items():
        p = plot_curves([_curve(r, cost, metric) for r in seed0], out / f"quality_vs_{cost}.png", xlabel=label,
                        ylabel=f"{metric['label']} ({'higher' if metric['higher_is_better'] else 'lower'} is better)",
                        title=f"hf-kd reproduce: {metric['label']} vs {label}",
                        baseline="baseline", target=target)
        paths.append(str(p))
    return paths


def rerender(output_dir: str | Path) -> dict:
    """Rebuild the report of a finished ``hf-kd reproduce`` folder from its runs' own logs."""
    out = Path(output_dir)
    results = json.loads((out / "results.json").read_text())
    task = "vision" if results.get("metric", {}).get("key") == "top1" else "text"
    for r in results["runs"]:
        run_dir = Path(r["run_dir"])
        if task == "text":
            r["log_history"] = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        else:
            r["log_history"] = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return write_report(results, out, task)


def write_report(results: dict, out: Path, task: str = "text") -> dict:
    """Add speed-ups and findings to ``results``; write results.json, results.md and the PNGs."""
    metric = METRICS[task]
    results["metric"] = dict(metric)
    table = speedups(results["runs"], metric)
    results["summary"] = table
    results["findings"] = findings(table, metric)
    results["plots"] = plots(results["runs"], out, metric)
    teachers = "\n".join(f"- teacher `{n}`: {m['steps']} steps, final {metric['label']} "
                         f"{m.get('final_quality', m.get('final_eval_loss', float('nan'))):.4f}, "
                         f"{m['gpu_hours']:.5f} GPU-hours (sunk: recycled checkpoints)" for n, m in
                         results["teachers"].items())
    verdicts = "\n".join(f"- {'REPRODUCED' if f['reproduced'] else 'not reproduced'}: {f['finding']} — "
                         f"{f['evidence']}" for f in results["findings"])
    md = (f"# hf-kd reproduce ({results['corpus']})\n\n{teachers}\n\n{markdown_table(table, metric)}\n\n"
          "Paper-style: the baseline's final cost / the cost from which a run *stays* at or beyond the baseline's "
          "final quality. Budget frontier: cost that baselines trained with their own full schedules at several budgets "
          f"(the `baseline_*x` rows) need for the run's final quality / the run's cost; not reached = beyond the frontier.\n\n## Findings\n{verdicts}\n")
    (out / "results.md").write_text(md)
    slim = dict(results, runs=[{k: v for k, v in r.items() if k != "log_history"} for r in results["runs"]])
    (out / "results.json").write_text(json.dumps(slim, indent=2, default=str))
    results["markdown"] = md
    return results
