"""``hf-kd reproduce --study``: where does KD pay on this machine? (docs/regime_study.md has the results)

    hf-kd reproduce --study --output_dir runs/regime_study            # every cell, 3 seeds, resumable
    hf-kd reproduce --study --rerender --output_dir runs/regime_study   # rebuild study.md/.json/.png from logs
    hf-kd reproduce --study --rerender --check --output_dir docs/regime_study   # exit 2 if study.md is stale

The tiny MLM protocol (``MLM_TINY``: built-in corpus, tiny BERT, masked-token loss) with one knob moved per axis.
Each cell reports the budget-frontier speed-up (calibrated cost, the verdicts' axis; and steps) of KD stopped at
50% and KD throughout, geometric mean ×/÷ geometric sd [90% interval on log speed-ups] over seeds paired with the baselines' seeds:

* ``budget``: students' steps 200 / 400 / 800 / 1600 with one teacher of 4,800 steps;
* ``teacher``: teachers of 400 / 1,200 / 4,800 steps (1x / 3x / 12x the budget) at 400 steps;
* ``positions``: KD at the masked positions vs at every position, 800 steps, 4,800-step teacher;
* ``alpha_t``: (α, T) = (0.5, 1) (ours) vs (0.9, 4) (the paper's code), 800 steps, 4,800-step teacher.

Each cell is one :func:`~hf_kd.reproduce.run.run_protocol` of the text back end in ``cells/<cell>``. Runs without teachers live
in ``baselines/`` and are shared: an 800-step baseline is the 2x frontier point of the 400-step cell and the 1x
baseline of the 800-step one (``jobs.comparable``). The settings a cell shares with another (e.g. 800 steps,
masked, 0.5/1) are one cell, drawn on every axis it belongs to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..core.errors import UserError
from .presets import MLM_TINY, TextPreset
from .protocol import TaskBackend
from .report import load_results, rerender, write_report
from .run import run_protocol

logger = logging.getLogger(__name__)
STRONG_TEACHER = 4800  # steps: 12x the demo's 400-step budget, 3x the largest budget studied
KD_VARIANTS = ("kd_stop50", "kd_full")
FRONTIER = (0.75, 1.5, 2.0)
AXES = {"budget": "student budget (steps)", "teacher": "teacher steps (at a 400-step budget)",
        "positions": "KD positions (800 steps)", "alpha_t": "(α, T) (800 steps)"}


@dataclass(frozen=True)
class Cell:
    """One protocol of the study: the tiny preset with ``changes``; drawn at ``x`` on each of ``axes``."""

    name: str
    changes: dict = field(default_factory=dict)
    axes: tuple[str, ...] = ()
    x: dict = field(default_factory=dict)  # axis -> the value drawn on it
    variants: tuple[str, ...] = KD_VARIANTS

    def preset(self, base: TextPreset) -> TextPreset:
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in self.changes.items()}
        return replace(base, **{"frontier": FRONTIER, **changes})


def cells(scale: float = 1.0) -> list[Cell]:
    """The study's grid, most informative first (the 1,600-step cell and its long baselines lead).

    ``scale`` multiplies every step count (tests run the whole grid at ``scale=0.01``)."""
    def n(steps: int) -> int:
        return max(1, round(steps * scale))

    strong = n(STRONG_TEACHER)
    return [
        Cell("steps1600", {"steps": n(1600), "good_teacher_steps": strong}, ("budget",),
             {"budget": n(1600)}),
        Cell("steps800", {"steps": n(800), "good_teacher_steps": strong}, ("budget", "positions", "alpha_t"),
             {"budget": n(800), "positions": "masked", "alpha_t": "0.5, 1"}),
        Cell("steps400", {"steps": n(400), "good_teacher_steps": strong}, ("budget", "teacher"),
             {"budget": n(400), "teacher": strong}),
        Cell("steps200", {"steps": n(200), "good_teacher_steps": strong}, ("budget",), {"budget": n(200)}),
        Cell("teacher1200", {"steps": n(400), "good_teacher_steps": n(1200)}, ("teacher",), {"teacher": n(1200)}),
        Cell("teacher400", {"steps": n(400), "good_teacher_steps": n(400)}, ("teacher",), {"teacher": n(400)}),
        Cell("positions_all", {"steps": n(800), "good_teacher_steps": strong, "kd_positions": "all"}, ("positions",),
             {"positions": "all"}, ("kd_stop50",)),
        Cell("alpha0.9_T4", {"steps": n(800), "good_teacher_steps": strong, "kd_alpha": 0.9, "kd_temperature": 4.0},
             ("alpha_t",), {"alpha_t": "0.9, 4"}, ("kd_stop50",)),
    ]


def run_study(output_dir: str, seeds: int = 3, workers: int = 2, threads: int = 1,
              base: TextPreset | None = None, only_cells: list[str] | None = None, scale: float = 1.0,
              corpus_path: str | None = None,
              backend_for: Callable[[TextPreset, str | None], TaskBackend] | None = None) -> dict:
    """Run every cell (finished runs are reused; shared baselines trained once) and write the study report.

    ``backend_for(preset, corpus_path)``: the text back end of a cell (the caller picks the task module)."""
    if backend_for is None:
        raise ValueError("run_study needs backend_for (e.g. hf_kd.reproduce.text.TextBackend)")
    out = Path(output_dir)
    grid = _select(only_cells, scale)
    for i, c in enumerate(grid, 1):
        logger.info("regime study: cell %d/%d %s", i, len(grid), c.name)
        folder = out / "cells" / c.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cell.json").write_text(json.dumps(asdict(c), indent=1))  # what render() draws it as
        run_protocol(backend_for(c.preset(base or MLM_TINY), corpus_path), str(folder), seeds, list(c.variants),
                     workers=workers, threads=threads, baseline_dir=str(out / "baselines"))
    return render(out)


def _select(only_cells: list[str] | None, scale: float = 1.0) -> list[Cell]:
    grid = cells(scale)
    if only_cells:
        bad = [n for n in only_cells if n not in {c.name for c in grid}]
        if bad:
            raise UserError(f"--only {' '.join(bad)}: unknown study cell(s); expected some of "
                            f"{', '.join(c.name for c in grid)}")
        grid = [c for c in grid if c.name in only_cells]
    return grid


def cell_summary(results: dict, cell: Cell) -> dict:
    """What the study keeps of a cell's report: per KD variant its frontier speed-ups, verdict and qualities."""
    table = results["summary"]
    teacher = results["teachers"].get("good", {})
    out = {"cell": cell.name, "x": cell.x, "axes": list(cell.axes), "steps": results["preset"]["steps"],
           "teacher_steps": teacher.get("steps"), "teacher_quality": teacher.get("final_quality"),
           "unigram_entropy": (results.get("regime") or {}).get("unigram_entropy"),
           "baseline_quality": table["baseline"]["final_quality"], "variants": {}}
    for v in cell.variants:
        row = table[v]
        out["variants"][v] = {k: row.get(k) for k in ("final_quality", "frontier_speedup_calibrated",
                                                      "frontier_speedup_step", "paper_speedup_step", "verdict",
                                                      "verdict_reason")}
    return out


def render(out: Path, grid: list[Cell] | None = None, write: bool = True) -> dict:
    """study.json/.md/.png from the cells' results.json (their run logs), via the reproduce report."""
    summaries = []
    if grid is None:  # every cell run so far, as it was defined when run
        grid = [Cell(**{**json.loads(f.read_text()), "axes": tuple(json.loads(f.read_text())["axes"])})
                for f in sorted((out / "cells").glob("*/cell.json"))]
    if not grid:
        raise UserError(f"{out}: no study cells found (expected {out}/cells/<cell>/cell.json); run hf-kd reproduce "
                        "--study first")
    for c in grid:
        folder = out / "cells" / c.name
        if not (folder / "results.json").is_file():
            raise UserError(f"{folder}: no results.json (cell not run yet); run hf-kd reproduce --study first")
        if write:
            results = rerender(folder)
        else:
            results = write_report(load_results(folder), folder, write=False)
        summaries.append(cell_summary(results, c))
    md = study_markdown(summaries)
    plot = None
    if write:
        (out / "study.json").write_text(json.dumps({"cells": summaries}, indent=1, default=str))
        (out / "study.md").write_text(md)
        plot = str(plot_study(summaries, out / "study.png"))
    return {"markdown": md, "cells": summaries, "plots": [plot] if plot else []}


def check(out: Path) -> dict:
    """Raise if study.md is not what the cells' run logs give (a stale or edited study)."""
    fresh = render(out, write=False)["markdown"]
    old = (out / "study.md").read_text()
    if old != fresh:
        line = next(i for i, (a, b) in enumerate(zip(old.splitlines() + [""], fresh.splitlines() + [""]), 1) if a != b)
        raise UserError(f"{out / 'study.md'} does not follow from its cells' run logs (first difference at line "
                        f"{line}); regenerate it with hf-kd reproduce --study --rerender --output_dir {out}")
    return {"markdown": f"{out / 'study.md'}: every number follows from its cells' run logs", "plots": []}


def _fmt(stat: dict | None) -> str:
    from ..core.uncertainty import format_spread

    return format_spread(stat) if stat else "-"


def study_markdown(summaries: list[dict]) -> str:
    from ..core.uncertainty import format_per_seed

    lines = ["| axis | setting | cell | teacher (steps: loss) | baseline loss | variant | KD loss | "
             "frontier speed-up, calibrated cost | per seed | frontier speed-up, steps | verdict |", "|" + "---|" * 11]
    for axis in AXES:
        for s in sorted((s for s in summaries if axis in s["axes"]), key=lambda s: str(s["x"][axis]).zfill(8)):
            for v, r in s["variants"].items():
                lines.append(
                    f"| {axis} | {s['x'][axis]} | {s['cell']} | {s['teacher_steps']}: {s['teacher_quality']:.3f} | "
                    f"{s['baseline_quality']['mean']:.3f} | {v} | {r['final_quality']['mean']:.3f} | "
                    f"{_fmt(r['frontier_speedup_calibrated'])} | {format_per_seed(r['frontier_speedup_calibrated'])} | "
                    f"{_fmt(r['frontier_speedup_step'])} | "
                    f"{r['verdict']} |")
    h = next((s["unigram_entropy"] for s in summaries if s.get("unigram_entropy")), None)
    head = (f"Validation unigram entropy: {h:.3f} nats. " if h else "") + (
        "Speed-ups: geometric mean ×/÷ geometric sd [90% interval on log speed-ups] over seeds (seed i vs seed i); ≥ / ≤: beyond the frontier's last / "
        "before its first point (a bound). Verdicts on the calibrated-cost frontier speed-up.")
    return f"{head}\n\n" + "\n".join(lines) + "\n"


def plot_study(summaries: list[dict], path: Path) -> Path:
    """One panel per axis: frontier speed-up (calibrated) with its 90% interval per KD variant; 1.0 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(AXES), figsize=(4.2 * len(AXES), 3.6), sharey=True)
    for ax, (axis, label) in zip(axs, AXES.items()):
        cs = sorted((s for s in summaries if axis in s["axes"]), key=lambda s: str(s["x"][axis]).zfill(8))
        ticks = [str(s["x"][axis]) for s in cs]
        for j, v in enumerate(KD_VARIANTS):
            pts = [(i, s["variants"][v]["frontier_speedup_calibrated"]) for i, s in enumerate(cs) if v in s["variants"]]
            pts = [(i + 0.08 * (j - 0.5), d) for i, d in pts if d and d["mean"] is not None]
            if not pts:
                continue
            lo = [d["mean"] - (d["ci90"] or (d["mean"], d["mean"]))[0] for _, d in pts]
            hi = [(d["ci90"] or (d["mean"], d["mean"]))[1] - d["mean"] for _, d in pts]
            ax.errorbar([x for x, _ in pts], [d["mean"] for _, d in pts], yerr=[lo, hi], marker="o", capsize=3,
                        label=v)
        ax.axhline(1.0, ls="--", color="gray", lw=1)
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_title(label, fontsize=9)
    axs[0].set_ylabel("frontier speed-up (calibrated cost)\nmean, 90% interval")
    handles, labels = next(((h, lab) for h, lab in (a.get_legend_handles_labels() for a in axs) if h), ([], []))
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
