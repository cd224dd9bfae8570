"""Turn ``hf-kd reproduce`` runs into results.md/.json and plots, and check a report against its logs (``--rerender``).

The speed-ups and their spreads are :mod:`hf_kd.reproduce.table` (curve math: :mod:`hf_kd.core.curves`, shared
with ``glue_eval.report``); the verdict rule is :mod:`hf_kd.core.uncertainty`; the findings are
:mod:`hf_kd.reproduce.findings`. results.json's ``task`` picks the quality metric (``table.METRICS``).

Three cost axes: ``gpu_hours`` (measured wall-clock of each run, bent by machine load), ``calibrated`` (each run's
steps x the per-step cost of its step kind, all measured interleaved in one process: see
:mod:`hf_kd.reproduce.calibrate`; in baseline-step units) and ``step``. Verdicts use ``calibrated`` when the run
has a calibration, else ``gpu_hours``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.curves import plot_curves
from ..core.errors import UserError
from ..core.uncertainty import RULE, format_per_seed, format_spread
from .costs import CostModel
from .findings import findings
from .glue import glue_section
from .protocol import Calibration, RunRecord
from .recycle_report import cache_lines, cost_views_section
from .table import AXES, METRICS, TEXT, VariantRow, axes_of, curve, final, speedups, verdict_axis

logger = logging.getLogger(__name__)


def _fmt(stat: dict, speed: bool = False, digits: int = 3) -> str:
    """Speed-ups: geometric mean ×/÷ geometric sd [90% interval]; other values: mean ± sd."""
    if speed or stat["mean"] is None:
        return format_spread(stat, speed=True)
    return f"{stat['mean']:.{digits}g}" + (f" ± {stat['std']:.2g}" if stat["n"] > 1 else "")


def markdown_table(table: dict[str, VariantRow], metric: dict = TEXT, calibration: Calibration | None = None,
                   regime: dict | None = None) -> str:
    axes = axes_of(calibration)
    unigram = (regime or {}).get("unigram_entropy")
    cols = [f"final {metric['label']} (mean ± sd)"] + (["below unigram (nats)"] if unigram is not None else [])
    cols += [metric["secondary_label"], "GPU-hours"] + (["calibrated cost"] if calibration else [])
    cols += ["teacher fwd"] + [f"paper ({AXES[a].split(' (')[0]})" for a in axes if a != "gpu_hours"]
    cols += [f"frontier ({AXES[a].split(' (')[0]})" for a in axes] + ["verdict"]
    lines = ["| variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in table.items():
        cells = [_fmt(r.final_quality, digits=4)]
        if unigram is not None:
            cells.append(f"{unigram - r.final_quality['mean']:.3f}")
        cells += [_fmt(r.stats["final_secondary"]), _fmt(r.stats["gpu_hours"])]
        if calibration:
            cells.append(f"{r.stats['calibrated_cost']['mean']:.0f}")
        cells.append(f"{r.stats['teacher_forwards']['mean']:.0f}")
        cells += [_fmt(r.paper[a], True) for a in axes if a != "gpu_hours"]
        cells += [_fmt(r.frontier[a], True) for a in axes]
        cells.append(r.verdict if r.role == "student" and name != "baseline" else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_lines(table: dict[str, VariantRow], calibration: Calibration | None) -> str:
    axis = verdict_axis(calibration)
    return "\n".join(f"- {name}: {format_per_seed(r.frontier[axis])} ({r.verdict_reason})"
                     for name, r in table.items() if r.role == "student" and name != "baseline")


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
    costs = CostModel(calibration, runs) if calibration else None
    paths = []
    for cost in axes_of(calibration):
        p = plot_curves([curve(r, cost, metric, costs) for r in seed0], out / f"quality_vs_{cost}.png",
                        xlabel=AXES[cost],
                        ylabel=f"{metric['label']} ({'higher' if metric['higher_is_better'] else 'lower'} is better)",
                        title=f"{metric['label']} vs {AXES[cost]}, seed {base.seed}",
                        baseline="baseline", target=final(base, metric["key"]), hlines=levels)
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


def _regime_lines(results: dict, table: dict[str, VariantRow], metric: dict) -> str:
    lines = []
    reg = results.get("regime") or {}
    h = reg.get("unigram_entropy")
    if h is not None:
        d = h - table["baseline"].final_quality["mean"]
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
    return "\n".join(lines + cache_lines(results))


def write_report(results: dict, out: Path, write: bool = True) -> dict:
    """Add speed-ups and findings to ``results`` (its ``task`` picks the metric); write results.json (with every
    run's log), results.md, PNGs."""
    metric = METRICS[results["task"]]
    results["metric"] = dict(metric)
    calibration = Calibration.from_dict(results.get("calibration"))
    runs = [RunRecord.from_dict(r) for r in results["runs"]]
    table = speedups(runs, metric, calibration)
    results["summary"] = {name: row.to_dict() for name, row in table.items()}
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
          f"{cost_views_section(table, runs, metric)}"
          f"## Findings\n{verdicts}\n")
    if results.get("glue"):  # GLUE of the final models (--glue): rebuilt from the per-seed numbers kept here
        mlm = {n: r.verdict for n, r in table.items() if r.role == "student" and n != "baseline"}
        results["glue_summary"], section = glue_section(results["glue"], mlm)
        md += "\n" + section
    results["markdown"] = md
    if write:
        (out / "results.md").write_text(md)
        # The runs' logs stay in results.json, so a report can be checked against them without the run folders.
        saved = {k: v for k, v in results.items() if k != "markdown"}
        (out / "results.json").write_text(json.dumps(saved, indent=1, default=str))
    return results
