"""``report.md`` of ``glue_eval.report``: the table, the majority-class levels, and the speed-ups with verdicts.

Every speed-up is printed with its verdict under the stated rule (``hf_kd.core.uncertainty.RULE``) and with
what its seeds are; the cost axis says whether load can bend it.
"""

from __future__ import annotations

from hf_kd.core.uncertainty import RULE

AXES = {"calibrated": "calibrated cost (baseline steps)", "gpu_hours": "GPU-hours (measured wall-clock)",
        "step": "steps"}


def _fmt(x, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


def what(metric: str) -> str:
    return {"glue": "GLUE average (BERT Table 1)", "glue_score": "GLUE score (leaderboard)"}.get(metric, metric)


def _axis_text(axis: str, costs, inp) -> str:
    if axis == "calibrated":
        kinds = "; ".join(f"`{run}`: {s.describe()}" for run, s in inp.run_steps.items())
        return (f"Cost axis: steps x calibrated step cost ({costs.label()}; from `{costs.source}`), in baseline "
                f"steps: machine load cannot bend it. Step kinds: {kinds}. Wall-clock GPU-hours follow as a second "
                "view.")
    if axis == "gpu_hours":
        return ("Cost axis: pretraining GPU-hours as measured (wall-clock): **machine load can bend it** (a run "
                "trained while the machine was busy looks slower). Give `--step_costs base=1.0,kd=COST` (or a "
                "`calibration.json` of `hf-kd reproduce`) for a cost axis load cannot bend.")
    return "Cost axis: optimizer steps (a KD step is charged like a baseline step)."


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


def _levels_section(levels) -> list[str]:
    if levels is None or not (levels.tasks or levels.unknown):
        return []
    lines = ["", "## Majority-class level", "",
             "Per task, from the dev labels evaluated: the score of always predicting the most frequent class "
             "(STS-B: the mean score) and of a uniform random guess (chance). A score within "
             f"{levels.tolerance:g} of the higher of the two is *at majority-class level*: the fine-tune learned "
             "nothing the checkpoint could be credited for."]
    if levels.tasks:
        lines += ["", "| task | majority class | chance | scores at that level |", "|---|---|---|---|"]
    for t, lv in levels.tasks.items():
        verdict = f"{lv.at_level} of {lv.entries}"
        if lv.no_signal:
            verdict += ": **at majority-class level: no signal in this task** (left out of the quality)"
        lines.append(f"| {t} | {_fmt(lv.majority, '.4g')} | {_fmt(lv.chance, '.4g')} | {verdict} |")
    if levels.unknown:
        lines += ["", f"Level unknown for {', '.join(levels.unknown)} (lines written before the sweep stored "
                  "`levels`): give `--glue_dir` to compute it; until then a speed-up there may be noise."]
    return lines


def _speedup_table(rows, args, axis: str) -> list[str]:
    frontier = bool(args.frontier)
    lines = [f"| run | reaches target at ({AXES[axis]}, seed-mean curve) | paper-style per seed | paper-style "
             "(geometric mean ×/÷ sd [90% interval]) | verdict |"
             + (" budget frontier per seed | budget frontier | verdict |" if frontier else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if frontier else "")]
    for s in rows:
        crossing = s.no_signal or ("not reached" if s.crossing_cost is None else f"{s.crossing_cost:.6g}")
        line = f"| {s.run} | {crossing} | {_per_seed(s.paper)} | {s.paper.text} | {s.paper.cell} |"
        if frontier and s.frontier is not None:
            line += f" {_per_seed(s.frontier)} | {s.frontier.text} | {s.frontier.cell} |"
        lines.append(line)
    return lines


def _per_seed(j) -> str:
    marks = {">=": "≥", "<=": "≤"}
    return ", ".join("not reached" if v is None else f"{marks.get(b, '')}{v:.2f}x" for v, b in zip(j.per_seed, j.bounds))


def render_markdown(table, views: dict, args, axis: str, inp, costs) -> str:
    name = what(args.metric)
    quality = inp.note if args.metric in ("glue", "glue_score") else f"{name} ({inp.note})"
    dead = inp.levels.dead if inp.levels else []
    lines = [f"# {name} vs pretraining {AXES[axis]}", "",
             f"Quality: {quality}; {'lower' if args.lower_is_better else 'higher'} is better. "
             f"Baseline: `{args.baseline}`.", "", _axis_text(axis, costs, inp), *_notes(inp.info)]
    lines += ["", f"| run | checkpoint | step | {AXES[axis]} | {name} mean | std | seeds | diverged seeds* | "
              "tasks at majority-class level |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        mean = "diverged*" if r.n == 0 else _fmt(r.mean)
        marks = ", ".join(inp.levels.marks(r.run, r.checkpoint, r.n)) if inp.levels else ""
        lines.append(f"| {r.run} | {r.checkpoint} | {'' if r.step is None else r.step} | {_fmt(r.cost, '.6g')} | "
                     f"{mean} | {_fmt(r.std)} | {r.n} | {r.diverged or ''} | {marks} |")
    lines += _levels_section(inp.levels)
    rows = views[axis]
    target = _fmt(rows[0].target) if rows else ""
    lines += ["", f"## Speed-up over the baseline, on pretraining {AXES[axis]}", "", f"Seeds: {inp.seeds}.", "",
              f"Rule: {RULE}. A `≥` value is a bound (reached at the run's first checkpoint).", "",
              f"Target: the baseline's final {name} = {target}"
              + (f", over the tasks with signal (left out: {', '.join(dead)})." if dead and not
                 (rows and rows[0].no_signal) else "."), "", *_speedup_table(rows, args, axis)]
    for other, srows in views.items():
        if other != axis:
            lines += ["", f"### Second view: pretraining {AXES[other]} (machine load can bend it)", "",
                      *_speedup_table(srows, args, other)]
    return "\n".join(lines) + "\n"
