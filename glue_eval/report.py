"""Quality-vs-pretraining-cost report: table (markdown + CSV), PNG curves, and each KD run's speed-up.

From a GLUE sweep (quality = GLUE average, mean ± std over fine-tuning seeds)::

    python -m glue_eval.report glue/results.jsonl --baseline baseline --output_dir glue/report

Any scalar column, lower-is-better too; or straight from pretraining runs (no fine-tuning)::

    python -m glue_eval.report glue/results.jsonl --metric eval_loss --lower_is_better --baseline baseline \\
        --output_dir glue/report_loss
    python -m glue_eval.report --from_runs runs/baseline runs/kd --metric eval_loss --lower_is_better \\
        --baseline baseline --output_dir runs/report

Budget frontier (baselines trained with full schedules at several budgets)::

    python -m glue_eval.report glue/results.jsonl --baseline base-100k --frontier base-25k base-50k base-100k \\
        --output_dir glue/report

Speed-ups come from ``hf_kd.core.curves`` (paper-style sustained crossing; budget frontier); the spread is the
mean ± std of the speed-ups computed per fine-tuning seed (seed i of a run against seed i of the baseline).
A run whose curve cannot be told from the baseline's -- both constant at one value, or the difference of the
means within the seed spread (sqrt(std_run² + std_baseline²)) at every step both evaluated -- gets "no signal"
instead of a speed-up. Diverged fine-tunes are listed and left out; the fine-tuning protocol (fixed learning
rate, or best-on-dev of a grid) is stated. Writes ``report.md``, ``table.csv``, ``speedups.csv``,
``curves.png`` (mean ± std band over seeds), ``report.json`` in ``--output_dir``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_kd.core.cli_utils import parse_args, run_cli
from hf_kd.core.curves import (
    format_speedup,
    frontier_speedup,
    mean_std,
    paper_speedup,
    plot_curves,
    sustained_crossing_cost,
)

from .quality import mark_diverged, mean_curves, points_from_results, points_from_runs, seed_curves, table_rows
from .results import read_records


@dataclass
class ReportArguments:
    """Inputs and options of ``glue_eval.report``."""

    baseline: str = field(metadata={"help": "Name of the baseline run (its folder name)."})
    output_dir: str = field(metadata={"help": "Where report.md, table.csv, speedups.csv, curves.png go."})
    results: str | None = field(default=None, metadata={"help": "Sweep results JSONL (also the first positional "
                                                        "argument)."})
    from_runs: list[str] | None = field(default=None, metadata={"help": "Pretraining run folders: read their "
                                                                "trainer_state.json instead of a results file."})
    metric: str = field(default="glue", metadata={"help": "'glue' (GLUE average, BERT Table 1), 'glue_score' (GLUE "
                                                  "leaderboard score) or a scalar key, e.g. accuracy, score, "
                                                  "eval_loss."})
    lower_is_better: bool = field(default=False, metadata={"help": "The metric improves downwards (losses)."})
    cost: str = field(default="gpu_hours", metadata={"help": "Cost axis: gpu_hours or step."})
    tasks: str | None = field(default=None, metadata={"help": "Only these tasks of the results file."})
    frontier: list[str] | None = field(default=None, metadata={"help": "Baseline runs at several budgets for "
                                                               "the budget-frontier speed-up."})


def _fmt_spread(values: list) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return f"not reached (0/{len(values)} seeds)"
    return f"{m:.2f}x{f' ± {s:.2f}' if n > 1 else ''} ({n}/{len(values)} seeds)"


def no_signal(base_rows, run_rows, tol: float = 1e-9) -> str:
    """Why a run's curve cannot be told from the baseline's ("" when it can)."""
    means = [r.mean for r in [*base_rows, *run_rows]]
    if means and max(means) - min(means) <= tol * max(1.0, abs(means[0])):
        return f"both constant at {means[0]:.4f}"
    base = {r.step: r for r in base_rows if r.step is not None}
    pairs = [(base[r.step], r) for r in run_rows if r.step in base]
    if pairs and all(abs(a.mean - b.mean) <= math.hypot(a.std or 0.0, b.std or 0.0) + tol for a, b in pairs):
        return f"difference within the seed spread at all {len(pairs)} common steps"
    return ""


def speedup_rows(rows, points, args: ReportArguments) -> list[dict]:
    """Per non-baseline run: paper-style and (with ``--frontier``) budget-frontier speed-ups with seed spread."""
    hib = not args.lower_is_better
    means, seeds = mean_curves(rows, hib), seed_curves(points, hib)
    frontier = list(args.frontier or [])
    base = means[args.baseline]
    out = []
    for run, curve in means.items():
        if run == args.baseline or run in frontier:
            continue
        common = [s for s in seeds[run] if s in seeds[args.baseline]]
        per_seed = [paper_speedup(seeds[args.baseline][s], seeds[run][s]) for s in common]
        row = {"run": run, "target": base.final_quality,
               "crossing_cost": sustained_crossing_cost(curve, base.final_quality),
               "paper_speedup": paper_speedup(base, curve), "paper_speedup_per_seed": per_seed}
        row["no_signal"] = no_signal([r for r in rows if r.run == args.baseline], [r for r in rows if r.run == run])
        if row["no_signal"]:
            row["paper_speedup"], row["paper_speedup_per_seed"] = None, []
        row["paper"] = "no signal" if row["no_signal"] else format_speedup(row["paper_speedup"])
        row["paper_seeds"] = _fmt_spread(per_seed) if len(common) > 1 and not row["no_signal"] else ""
        if frontier:
            row["frontier_speedup"] = frontier_speedup([means[f] for f in frontier], curve)
            fs = [frontier_speedup([seeds[f][s] for f in frontier], seeds[run][s]) for s in common
                  if all(s in seeds[f] for f in frontier)]
            row["frontier"] = format_speedup(row["frontier_speedup"])
            row["frontier_seeds"] = _fmt_spread(fs) if len(fs) > 1 else ""
        out.append(row)
    return out


def _fmt(x, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


def _what(metric: str) -> str:
    return {"glue": "GLUE average (BERT Table 1)", "glue_score": "GLUE score (leaderboard)"}.get(metric, metric)


def _notes(info: dict) -> list[str]:
    lines = []
    if info.get("protocol"):
        lines += ["", f"Fine-tuning protocol: {info['protocol']}."]
    if info.get("selected"):
        lines += ["", "Selected learning rates: " + "; ".join(f"{'/'.join(map(str, k))}: {lr:g}"
                                                              for k, lr in info["selected"].items()) + "."]
    if info.get("diverged"):
        lines += ["", "\\* **diverged fine-tunes** (non-finite loss or metrics): their (run, checkpoint, seed) is "
                  "left out of the means, the curves and the speed-ups: " + "; ".join(info["diverged"]) + "."]
    return lines


def render_markdown(rows, speedups, args: ReportArguments, note: str, info: dict | None = None) -> str:
    what = _what(args.metric)
    quality = note if args.metric in ("glue", "glue_score") else f"{what} ({note})"
    lines = [f"# {what} vs pretraining {args.cost}", "", f"Quality: {quality}; "
             f"{'lower' if args.lower_is_better else 'higher'} is better. Baseline: `{args.baseline}`.",
             *_notes(info or {}), "",
             f"| run | checkpoint | step | {args.cost} | {what} mean | std | seeds | diverged seeds* |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mean = "diverged*" if r.n == 0 else _fmt(r.mean)
        lines.append(f"| {r.run} | {r.checkpoint} | {'' if r.step is None else r.step} | {_fmt(r.cost, '.6g')} | "
                     f"{mean} | {_fmt(r.std)} | {r.n} | {r.diverged or ''} |")
    lines += ["", "## Speed-up over the baseline", "",
              f"Target: the baseline's final {what} = {_fmt(speedups[0]['target']) if speedups else ''}. "
              "\"no signal\": the run's curve cannot be told from the baseline's (both constant, or the difference "
              "within the seed spread at every common step).", "",
              f"| run | reaches target at ({args.cost}) | paper-style | per seed (mean ± std) |"
              + (" budget frontier | per seed |" if args.frontier else ""),
              "|---|---|---|---|" + ("---|---|" if args.frontier else "")]
    for s in speedups:
        crossing = "not reached" if s["crossing_cost"] is None else f"{s['crossing_cost']:.6g}"
        crossing = f"no signal ({s['no_signal']})" if s.get("no_signal") else crossing
        line = f"| {s['run']} | {crossing} | {s['paper']} | {s['paper_seeds']} |"
        lines.append(line + (f" {s['frontier']} | {s['frontier_seeds']} |" if args.frontier else ""))
    return "\n".join(lines) + "\n"


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    if records:
        w = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(records)
    return buf.getvalue()


def _load_points(args: ReportArguments):
    if bool(args.results) == bool(args.from_runs):
        raise ValueError("give either a results file (RESULTS.jsonl / --results) or --from_runs RUN_DIR ..., not "
                         f"{'both' if args.results else 'neither'}")
    if args.cost not in ("gpu_hours", "step"):
        raise ValueError(f"--cost {args.cost!r} is invalid; expected gpu_hours or step")
    if args.from_runs:
        points = points_from_runs(args.from_runs, args.metric, args.cost, not args.lower_is_better)
        return points, "trainer_state.json", {"ylabel": args.metric}
    if not Path(args.results).is_file():
        raise FileNotFoundError(f"results file {args.results!r} does not exist; expected a glue_eval.sweep JSONL")
    return points_from_results(read_records(args.results)[0], args.metric, args.cost, args.tasks)


def _plot(rows, args: ReportArguments, ylabel: str, path: Path) -> None:
    curves = mean_curves(rows, not args.lower_is_better)
    spread = {run: [r.std or 0.0 for r in rows if r.run == run] for run in curves}
    xlabel = {"gpu_hours": "pretraining GPU-hours", "step": "pretraining step"}[args.cost]
    plot_curves(list(curves.values()), path, xlabel=xlabel, ylabel=ylabel, title=f"{_what(args.metric)} vs "
                "pretraining cost (mean ± std over seeds)", baseline=args.baseline,
                target=curves[args.baseline].final_quality if args.baseline in curves else None, spread=spread)


def build_report(args: ReportArguments) -> dict:
    """Quality-vs-cost table, curves and speed-ups from ``args``; files written only when every input is valid.

    Returns the report dict (``rows``, ``speedups``, ``protocol``, ``diverged``, ``ylabel``, ...), also
    written as ``report.json``.
    """
    points, note, info = _load_points(args)
    rows = table_rows(points)
    runs = list(dict.fromkeys(r.run for r in rows))
    diverged_runs = {d.split("/")[0] for d in info.get("diverged", [])}
    for name in [args.baseline, *(args.frontier or [])]:
        if name not in runs and name not in diverged_runs:
            raise ValueError(f"run {name!r} (--baseline/--frontier) has no data; expected one of {runs}")
    ok = all(name in runs for name in [args.baseline, *(args.frontier or [])])
    speedups = speedup_rows(rows, points, args) if ok else []
    table = mark_diverged(rows, info.get("diverged_groups", []))
    md = render_markdown(table, speedups, args, note, info)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        _plot(rows, args, info["ylabel"], out / "curves.png")
    (out / "report.md").write_text(md)
    (out / "table.csv").write_text(render_csv([asdict(r) for r in table]))
    flat = [{k: v for k, v in s.items() if not k.endswith("_per_seed")} for s in speedups]
    (out / "speedups.csv").write_text(render_csv(flat))
    report = {"metric": args.metric, "note": note, "ylabel": info["ylabel"], "protocol": info.get("protocol"),
              "selected_learning_rates": {"/".join(map(str, k)): v for k, v in info.get("selected", {}).items()},
              "diverged": info.get("diverged", []), "rows": [asdict(r) for r in rows],
              "table": [asdict(r) for r in table], "speedups": speedups}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _positional(argv: list[str]) -> list[str]:
    if argv and not argv[0].startswith("-") and not (len(argv) == 1 and argv[0].endswith(".json")):
        return ["--results", argv[0], *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> dict | int:
    """With ``argv`` (tests): the report dict, errors raised. Without (console): exit status."""
    if argv is None:
        return run_cli(lambda: main(sys.argv[1:]))
    (args,) = parse_args((ReportArguments,), _positional(list(argv)))
    report = build_report(args)
    print((Path(args.output_dir) / "report.md").read_text())  # the CLI shows it; build_report only writes files
    return report


if __name__ == "__main__":
    sys.exit(main())
