"""Turn ``hf-kd reproduce`` runs into speed-ups with spreads, a table, plots and a verdict per paper finding.

Curve/speed-up/plot math is :mod:`hf_kd.core.curves` (shared with ``glue_eval.report``); the verdict rule is
:mod:`hf_kd.core.uncertainty`; the findings are :mod:`hf_kd.reproduce.findings`.

Three cost axes: ``gpu_hours`` (measured wall-clock of each run, bent by machine load), ``calibrated`` (each run's
steps x the per-step cost of its step kind, all measured interleaved in one process: see
:mod:`hf_kd.reproduce.calibrate`; in baseline-step units) and ``step``. Verdicts use ``calibrated`` when the run
has a calibration, else ``gpu_hours``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.curves import Curve, curve_from_log_history, frontier_speedup_bounded, paper_speedup, plot_curves
from ..core.errors import UserError
from ..core.uncertainty import RULE, format_per_seed, format_spread, speedup_spread, spread_of, verdict
from .calibrate import calibrated_cost
from .findings import findings, verdict_axis
from .protocol import Calibration, RunRecord

logger = logging.getLogger(__name__)
AXES = {"gpu_hours": "GPU-hours (measured)", "calibrated": "calibrated cost (baseline steps)", "step": "steps"}
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


def _curve(run: RunRecord, cost: str, metric: dict, calibration: Calibration | None = None) -> Curve:
    key = "step" if cost == "calibrated" else cost
    c = curve_from_log_history(run.variant, run.log_history, metric["key"], key, metric["higher_is_better"])
    if cost == "calibrated":
        c = Curve(c.name, [calibrated_cost(run, s, calibration) for s in c.cost], c.quality, c.higher_is_better)
    return c


def _final(run: RunRecord, key: str) -> float | None:
    vals = [e[key] for e in run.log_history if key in e]
    return vals[-1] if vals else None


def axes_of(calibration: Calibration | None) -> list[str]:
    return [a for a in AXES if a != "calibrated" or calibration]


def _seed_entry(r: RunRecord, base: RunRecord, frontier: list[RunRecord], metric: dict,
                calibration: Calibration | None) -> dict:
    entry = {"final_quality": _final(r, metric["key"]), "final_secondary": _final(r, metric["secondary"]),
             "gpu_hours": _curve(r, "gpu_hours", metric).final_cost, "steps": r.steps,
             "teacher_forwards": r.teacher_forwards}
    if calibration:
        entry["calibrated_cost"] = calibrated_cost(r, r.steps, calibration)
    for axis in axes_of(calibration):
        curve = _curve(r, axis, metric, calibration)
        # The baseline's paper-style speed-up is 1.00x by definition (its own target); computing it can give
        # e.g. 1.02x when an earlier evaluation already equalled its final quality.
        entry[f"paper_speedup_{axis}"] = (1.0, "=") if r is base else (
            paper_speedup(_curve(base, axis, metric, calibration), curve), "=")
        entry[f"frontier_speedup_{axis}"] = frontier_speedup_bounded(
            [_curve(f, axis, metric, calibration) for f in frontier], curve)
    return entry


def speedups(runs: list[RunRecord], metric: dict = TEXT, calibration: Calibration | None = None) -> dict[str, dict]:
    """Per variant: per-seed speed-ups (seed i vs seed i), their spreads and verdicts, and final qualities."""
    by_seed: dict[int, dict[str, RunRecord]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, {})[r.variant] = r
    table: dict[str, dict] = {}
    for seed, rs in sorted(by_seed.items()):
        base = rs["baseline"]
        frontier = [r for r in rs.values() if r.role == "frontier"] + [base]
        for name, r in rs.items():
            row = table.setdefault(name, {"role": r.role, "per_seed": []})
            row["per_seed"].append({"seed": seed, **_seed_entry(r, base, frontier, metric, calibration)})
    for row in table.values():
        for k in row["per_seed"][0]:
            if k == "seed":
                continue
            vals = [e[k] if isinstance(e[k], tuple) else (e[k], "=") for e in row["per_seed"]]
            row[k] = (speedup_spread(vals) if "_speedup_" in k else spread_of(vals)).to_dict()
        axis = verdict_axis(calibration)
        row["verdict"], row["verdict_reason"] = verdict(speedup_spread([e[f"frontier_speedup_{axis}"]
                                                                        for e in row["per_seed"]]))
    return table


def _fmt(stat: dict, speed: bool = False, digits: int = 3) -> str:
    """Speed-ups: geometric mean ×/÷ geometric sd [90% interval]; other values: mean ± sd."""
    if speed or stat["mean"] is None:
        return format_spread(stat, speed=True)
    return f"{stat['mean']:.{digits}g}" + (f" ± {stat['std']:.2g}" if stat["n"] > 1 else "")


def markdown_table(table: dict[str, dict], metric: dict = TEXT, calibration: Calibration | None = None,
                   regime: dict | None = None) -> str:
    axes = axes_of(calibration)
    unigram = (regime or {}).get("unigram_entropy")
    cols = [f"final {metric['label']} (mean ± sd)"] + (["below unigram (nats)"] if unigram is not None else [])
    cols += [metric["secondary_label"], "GPU-hours"] + (["calibrated cost"] if calibration else [])
    cols += ["teacher fwd"] + [f"paper ({AXES[a].split(' (')[0]})" for a in axes if a != "gpu_hours"]
    cols += [f"frontier ({AXES[a].split(' (')[0]})" for a in axes] + ["verdict"]
    lines = ["| variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in table.items():
        cells = [_fmt(r["final_quality"], digits=4)]
        if unigram is not None:
            cells.append(f"{unigram - r['final_quality']['mean']:.3f}")
        cells += [_fmt(r["final_secondary"]), _fmt(r["gpu_hours"])]
        if calibration:
            cells.append(f"{r['calibrated_cost']['mean']:.0f}")
        cells.append(f"{r['teacher_forwards']['mean']:.0f}")
        cells += [_fmt(r[f"paper_speedup_{a}"], True) for a in axes if a != "gpu_hours"]
        cells += [_fmt(r[f"frontier_speedup_{a}"], True) for a in axes]
        cells.append(r["verdict"] if r["role"] == "student" and name != "baseline" else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_lines(table: dict[str, dict], calibration: Calibration | None) -> str:
    axis = verdict_axis(calibration)
    return "\n".join(f"- {name}: {format_per_seed(r[f'frontier_speedup_{axis}'])} ({r['verdict_reason']})"
                     for name, r in table.items() if r["role"] == "student" and name != "baseline")


def reference_levels(results: dict, metric: dict) -> dict[str, float]:
    """Horizontal lines for the plots: the unigram level and each teacher's final quality."""
    levels = {}
    if (results.get("regime") or {}).get("unigram_entropy") is not None:
        levels["unigram level"] = results["regime"]["unigram_entropy"]
    for n, m in results.get("teachers", {}).items():
        if m.get("final_quality") is not None:
            levels[f"teacher {n}"] = m["final_quality"]
    return levels


def plots(runs: list[RunRecord], calibration: Calibration | None, results: dict, out: Path,
          metric: dict = TEXT) -> list[str]:
    seed0 = [r for r in runs if r.seed == min(x.seed for x in runs)]
    base = next(r for r in seed0 if r.variant == "baseline")
    levels = reference_levels(results, metric)
    paths = []
    for cost in axes_of(calibration):
        p = plot_curves([_curve(r, cost, metric, calibration) for r in seed0], out / f"quality_vs_{cost}.png",
                        xlabel=AXES[cost],
                        ylabel=f"{metric['label']} ({'higher' if metric['higher_is_better'] else 'lower'} is better)",
                        title=f"{metric['label']} vs {AXES[cost]}, seed {base.seed}",
                        baseline="baseline", target=_final(base, metric["key"]), hlines=levels)
        paths.append(str(p))
    return paths


def load_results(out: Path) -> dict:
    """A finished folder's results.json; its ``task`` (``mlm``, ``clm``, ``vision``) says how to read it."""
    results = json.loads((out / "results.json").read_text())
    if results.get("task") not in METRICS:
        raise UserError(f"{out / 'results.json'} names task {results.get('task')!r}: expected one of "
                        f"{', '.join(METRICS)} (add \"task\" to a file written before results.json named it)")
    return results


def rerender(output_dir: str | Path, check: bool = False) -> dict:
    """Rebuild the report of a finished ``hf-kd reproduce`` folder from the run logs kept in its results.json.

    ``check``: write nothing, and raise if results.md is not what those logs give (a stale or edited report).
    Older results.json files without logs are read from each run's own folder.
    """
    out = Path(output_dir)
    results = load_results(out)
    task = results["task"]
    for r in results["runs"]:
        if "log_history" in r:
            continue
        run_dir = Path(r["run_dir"])
        if not run_dir.exists():
            run_dir = out / "runs" / run_dir.name
        if task != "vision":
            r["log_history"] = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        else:
            r["log_history"] = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    if not check:
        return write_report(results, out)
    fresh = write_report(results, out, write=False)["markdown"].splitlines()
    old = (out / "results.md").read_text().splitlines()
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(old, fresh), start=1) if a != b]
    if diff or len(old) != len(fresh):
        i, a, b = diff[0] if diff else (min(len(old), len(fresh)) + 1, "", "")
        raise UserError(f"{out / 'results.md'} does not follow from its run logs: line {i} reads {a[:80]!r}, the logs "
                        f"give {b[:80]!r}; regenerate it with hf-kd reproduce --rerender --output_dir {out}")
    return {"markdown": f"{out / 'results.md'}: every number follows from its run logs", "plots": []}


def _regime_lines(results: dict, table: dict, metric: dict) -> str:
    lines = []
    reg = results.get("regime") or {}
    h = reg.get("unigram_entropy")
    if h is not None:
        d = h - table["baseline"]["final_quality"]["mean"]
        lines.append(f"- validation unigram entropy (the loss of predicting the {metric.get('unigram_of', 'tokens')} own "
                     "frequencies: no "
                     f"context-free model does better): {h:.4f} nats; the baseline ends {abs(d):.3f} nats "
                     f"{'below' if d >= 0 else 'ABOVE'} it")
    for n, m in results["teachers"].items():
        q = m.get("final_quality", m.get("final_eval_loss", float("nan")))
        below = f", {h - q:.3f} nats below unigram (negative: above)" if h is not None else ""
        made = f"recycled {m['source']}" if m.get("source") else f"{m['steps']} steps"
        lines.append(f"- teacher `{n}`: {made}, final {metric['label']} {q:.4f}{below}, "
                     f"{m['gpu_hours']:.5f} GPU-hours (sunk: recycled checkpoints)")
    return "\n".join(lines)


def write_report(results: dict, out: Path, write: bool = True) -> dict:
    """Add speed-ups and findings to ``results`` (its ``task`` picks the metric); write results.json (with every
    run's log), results.md, PNGs."""
    metric = METRICS[results["task"]]
    results["metric"] = dict(metric)
    calibration = Calibration.from_dict(results.get("calibration"))
    runs = [RunRecord.from_dict(r) for r in results["runs"]]
    table = speedups(runs, metric, calibration)
    results["summary"] = table
    results["findings"] = findings(table, metric, calibration)
    results["plots"] = plots(runs, calibration, results, out, metric) if write else []
    axis = verdict_axis(calibration)
    verdicts = "\n".join(f"- {f['verdict']}: {f['finding']} — {f['evidence']}" for f in results["findings"])
    cal = ""
    if calibration:
        rel = ", ".join(f"{k} {v:.2f}" for k, v in calibration.relative.items())
        cal = (f"Calibrated cost: steps x per-step cost of the step kind, measured interleaved in one process "
               f"({calibration.rounds} rounds, {calibration.threads} thread(s)); relative to a baseline step: "
               f"{rel}.\n\n")
    md = (f"# hf-kd reproduce ({results['corpus']})\n\n{_regime_lines(results, table, metric)}\n\n"
          f"Seeds: {sorted({r['seed'] for r in results['runs']})}. Cells: mean ± sd over seeds; speed-ups: geometric mean ×/÷ geometric sd [90% interval on log speed-ups].\n\n"
          f"{markdown_table(table, metric, calibration, results.get('regime'))}\n\n"
          "Paper-style: the baseline's final cost / the cost from which a run *stays* at or beyond the baseline's "
          "final quality (1.00x for the baseline by definition). Budget frontier: cost that baselines trained with "
          "their own full schedules at several budgets (the `baseline_*x` rows) need for the run's final quality / "
          "the run's cost; ≥ = beyond the best frontier point (a lower bound).\n\n"
          f"{cal}Verdicts use the budget-frontier speed-up on the **{AXES[axis]}** axis; {RULE}.\n\n"
          f"Per-seed frontier speed-ups ({AXES[axis]}):\n{per_seed_lines(table, calibration)}\n\n"
          f"## Findings\n{verdicts}\n")
    results["markdown"] = md
    if write:
        (out / "results.md").write_text(md)
        # The runs' logs stay in results.json, so a report can be checked against them without the run folders.
        saved = {k: v for k, v in results.items() if k != "markdown"}
        (out / "results.json").write_text(json.dumps(saved, indent=1, default=str))
    return results
