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

Speed-ups come from ``hf_kd.core.curves`` (paper-style sustained crossing; budget frontier), computed per seed
(seed i of a run against seed i of the baseline) and judged by the project's one uncertainty rule
(``hf_kd.core.uncertainty``: geometric mean, 90% interval on log speed-ups, REPRODUCED / not reproduced /
inconclusive; one seed is always inconclusive): see ``glue_eval.speedups``. Scores that do not beat their task's
majority-class (or chance) level on its dev labels are marked; a task at that level in every run gives no
signal and is left out of the quality (``glue_eval.levels``). The cost axis is steps x calibrated step cost when
``--step_costs`` is given (``glue_eval.cost``; wall-clock GPU-hours then follow as a second view), else the
measured GPU-hours, which the report says machine load can bend. Diverged fine-tunes are listed and left out;
the fine-tuning protocol (fixed learning rate, or best-on-dev of a grid) is stated. Writes ``report.md``,
``table.csv``, ``speedups.csv``, ``curves.png`` (mean ± std band over seeds), ``report.json`` in
``--output_dir``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hf_kd.core.cli_utils import parse_args, run_cli
from hf_kd.core.curves import plot_curves

from .cost import KINDS_HELP, RunSteps, StepCosts, parse_step_costs, read_run_steps
from .levels import LevelCheck, check_levels
from .quality import (
    mark_diverged,
    mean_curves,
    points_from_results,
    points_from_runs,
    select_lines,
    table_rows,
)
from .report_md import AXES, render_markdown
from .results import read_records
from .speedups import SpeedupInputs, speedup_rows
from .tasks import TASKS, resolve_tasks


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
    cost: str | None = field(default=None, metadata={"help": "Cost axis: calibrated (steps x --step_costs; the "
                                                     "default when --step_costs is given), gpu_hours (measured "
                                                     "wall-clock; the default otherwise) or step."})
    step_costs: str | None = field(default=None, metadata={"help": f"Cost of one step of each kind, in baseline "
                                                           f"steps: {KINDS_HELP}."})
    tasks: str | None = field(default=None, metadata={"help": "Only these tasks of the results file."})
    frontier: list[str] | None = field(default=None, metadata={"help": "Baseline runs at several budgets for "
                                                               "the budget-frontier speed-up."})
    glue_dir: str | None = field(default=None, metadata={"help": "GLUE download folder: the majority-class levels "
                                                         "of results lines written before the sweep stored them."})
    level_tolerance: float = field(default=1.0, metadata={"help": "A score within this many points (0.01 for a "
                                                          "raw metric) of its task's majority-class/chance level "
                                                          "is at that level."})


@dataclass
class ReportInputs:
    """Points per cost axis (the first is the report's axis), and what is known about them."""

    views: dict[str, list]
    note: str
    info: dict
    levels: LevelCheck | None = None
    seeds: str = ""
    run_steps: dict[str, RunSteps] = field(default_factory=dict)


def _axis(args: ReportArguments) -> str:
    axis = args.cost or ("calibrated" if args.step_costs else "gpu_hours")
    if axis not in AXES:
        raise ValueError(f"--cost {axis!r} is invalid; expected {', '.join(AXES)}")
    if axis == "calibrated" and not args.step_costs:
        raise ValueError(f"--cost calibrated needs --step_costs; expected {KINDS_HELP}")
    return axis


def _charged(points: list, run_steps: dict[str, RunSteps], costs: StepCosts) -> list:
    """Points on the calibrated axis: each checkpoint's steps charged by their kind."""
    for p in points:
        if p.step is None:
            raise ValueError(f"{p.run}/{p.checkpoint} has no step; the calibrated cost axis needs each checkpoint's "
                             "step (or --cost gpu_hours)")
    return [replace(p, cost=run_steps[p.run].cost(p.step, costs)) for p in points]


def _run_steps(run_paths: dict[str, str | None]) -> dict[str, RunSteps]:
    missing = [r for r, path in run_paths.items() if not path]
    if missing:
        raise ValueError(f"the results lines of run {missing[0]!r} name no run_path; the calibrated cost axis reads "
                         "the run folder's all_results.json (or --cost gpu_hours)")
    return {run: read_run_steps(path) for run, path in run_paths.items()}


def _seeds_text(points: list) -> str:
    seeds = sorted({p.seed for p in points if p.seed is not None})
    if not seeds:
        return ("one pretraining run per name and no fine-tuning seeds: one value per run, so every verdict is "
                "inconclusive")
    text = (f"fine-tuning seeds {', '.join(map(str, seeds))} of one pretraining run per name (seed i of a run "
            "paired with seed i of the baseline): the interval covers fine-tuning noise, not pretraining noise")
    return text + ("; with one seed every verdict is inconclusive" if len(seeds) == 1 else "")


def _levels(records: list[dict], args: ReportArguments) -> tuple[LevelCheck | None, str | None]:
    """The majority-class check, and the tasks the quality keeps (the ones with signal, when some have none)."""
    if args.lower_is_better:
        return None, args.tasks
    keep = set(resolve_tasks(args.tasks)) if args.tasks else None
    lines, _ = select_lines([r for r in records if keep is None or r.get("task") in keep])
    check = check_levels(lines, args.metric, args.level_tolerance, args.glue_dir)
    present = {r.get("task") for r in lines}
    alive = [t for t in TASKS if t in present and t not in check.dead]
    return check, (",".join(alive) if check.dead and alive else args.tasks)


def _load(args: ReportArguments, axis: str, costs: StepCosts | None) -> ReportInputs:
    if bool(args.results) == bool(args.from_runs):
        raise ValueError("give either a results file (RESULTS.jsonl / --results) or --from_runs RUN_DIR ..., not "
                         f"{'both' if args.results else 'neither'}")
    axes = [axis] + (["gpu_hours"] if axis == "calibrated" else [])
    keys = {a: "step" if a == "calibrated" else a for a in axes}
    if args.from_runs:
        views = {a: points_from_runs(args.from_runs, args.metric, keys[a], not args.lower_is_better) for a in axes}
        inp = ReportInputs(views, "trainer_state.json", {"ylabel": args.metric}, seeds=_seeds_text(views[axis]))
        paths = {Path(d).resolve().name: d for d in args.from_runs}
    else:
        if not Path(args.results).is_file():
            raise FileNotFoundError(f"results file {args.results!r} does not exist; expected a glue_eval.sweep JSONL")
        records = read_records(args.results)[0]
        levels, tasks = _levels(records, args)
        loaded = {a: points_from_results(records, args.metric, keys[a], tasks) for a in axes}
        views = {a: v[0] for a, v in loaded.items()}
        inp = ReportInputs(views, loaded[axis][1], loaded[axis][2], levels, _seeds_text(views[axis]))
        paths = {r["run"]: r.get("run_path") for r in records}
    if axis == "calibrated":
        inp.run_steps = _run_steps({p.run: paths.get(p.run) for p in views[axis]})
        views[axis] = _charged(views[axis], inp.run_steps, costs)
        for g in inp.info.get("diverged_groups", []):
            g["cost"] = None if g["step"] is None else inp.run_steps[g["run"]].cost(int(g["step"]), costs)
    return inp


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    if records:
        w = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(records)
    return buf.getvalue()


def _plot(rows, args: ReportArguments, axis: str, ylabel: str, path: Path, seeds: int) -> None:
    curves = mean_curves(rows, not args.lower_is_better)
    spread = {run: [r.std or 0.0 for r in rows if r.run == run] for run in curves}
    what = {"glue": "GLUE average (BERT Table 1)", "glue_score": "GLUE score (leaderboard)"}.get(args.metric,
                                                                                               args.metric)
    band = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed per point: no spread shown"
    plot_curves(list(curves.values()), path, xlabel=f"pretraining {AXES[axis]}", ylabel=ylabel,
                title=f"{what} vs pretraining cost ({band})", baseline=args.baseline,
                target=curves[args.baseline].final_quality if args.baseline in curves else None, spread=spread)


def _speedups(inp: ReportInputs, args: ReportArguments) -> dict[str, list]:
    """Speed-up rows per cost axis; none when the baseline or a frontier run has no data left."""
    dead = inp.levels.dead if inp.levels else []
    present = {p.run for p in next(iter(inp.views.values()))}
    if not all(n in present for n in [args.baseline, *(args.frontier or [])]):
        return {a: [] for a in inp.views}
    no_signal = ""
    if dead and len(dead) == len(inp.levels.tasks) and not inp.levels.unknown:
        no_signal = "at majority-class level: no signal in " + ("this task" if len(dead) == 1 else "any task")
    out = {}
    for axis, points in inp.views.items():
        si = SpeedupInputs(table_rows(points), points, args.baseline, list(args.frontier or []),
                           not args.lower_is_better)
        out[axis] = speedup_rows(si, axis, no_signal)
    return out


def build_report(args: ReportArguments) -> dict:
    """Quality-vs-cost table, curves and speed-ups from ``args``; files written only when every input is valid.

    Returns the report dict (``rows``, ``speedups`` on the report's cost axis, ``views`` per axis, ``levels``,
    ``protocol``, ``diverged``, ``ylabel``, ...), also written as ``report.json``.
    """
    axis = _axis(args)
    costs = parse_step_costs(args.step_costs) if args.step_costs else None
    inp = _load(args, axis, costs)
    rows = table_rows(inp.views[axis])
    runs = list(dict.fromkeys(r.run for r in rows))
    diverged_runs = {d.split("/")[0] for d in inp.info.get("diverged", [])}
    for name in [args.baseline, *(args.frontier or [])]:
        if name not in runs and name not in diverged_runs:
            raise ValueError(f"run {name!r} (--baseline/--frontier) has no data; expected one of {runs}")
    views = _speedups(inp, args)
    table = mark_diverged(rows, inp.info.get("diverged_groups", []))
    md = render_markdown(table, views, args, axis, inp, costs)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        n_seeds = max((r.n for r in rows), default=0)
        _plot(rows, args, axis, inp.info["ylabel"], out / "curves.png", n_seeds)
    (out / "report.md").write_text(md)
    (out / "table.csv").write_text(render_csv([asdict(r) for r in table]))
    (out / "speedups.csv").write_text(render_csv([s.flat() for v in views.values() for s in v]))
    levels = inp.levels
    report = {"metric": args.metric, "note": inp.note, "ylabel": inp.info["ylabel"], "cost_axis": axis,
              "step_costs": costs.relative if costs else None, "seeds": inp.seeds,
              "run_steps": {k: asdict(v) for k, v in inp.run_steps.items()},
              "protocol": inp.info.get("protocol"),
              "selected_learning_rates": {"/".join(map(str, k)): v for k, v in inp.info.get("selected", {}).items()},
              "diverged": inp.info.get("diverged", []), "rows": [asdict(r) for r in rows],
              "table": [asdict(r) for r in table], "speedups": [asdict(s) for s in views[axis]],
              "views": {a: [asdict(s) for s in v] for a, v in views.items()},
              "levels": None if levels is None else {"tasks": {t: asdict(lv) for t, lv in levels.tasks.items()},
                                                     "no_signal_tasks": levels.dead, "unknown": levels.unknown,
                                                     "tolerance": levels.tolerance}}
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
