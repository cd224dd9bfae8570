"""``hf-kd reproduce --glue DIR``: the protocol's students fine-tuned on GLUE, judged by the one uncertainty rule.

hf_kd never imports ``glue_eval`` (it sits above hf_kd), so this module drives it as a user does: it runs
``python -m glue_eval.sweep`` and ``python -m glue_eval.report`` as subprocesses, once per pretraining seed, and
reads back the files they write (``glue/seed<i>/results.jsonl`` and ``glue/seed<i>/report/report.json``). The
sweep skips the fine-tunes already in its results file, so a rerun reuses them.

What is fine-tuned: the **final model** of every student and frontier run (the runs keep their weights when
``--glue`` is given). Intermediate evaluation points are not fine-tuned: each would multiply the fine-tunes (and
the runs' disk) by the number of evaluations, so the GLUE axis has the budget-frontier speed-up only; the
paper-style speed-up needs a curve and stays on the MLM loss.

Per pretraining seed, ``glue_eval.report`` gives each run's GLUE score (mean over the fine-tuning seeds) at its
calibrated cost and its budget-frontier speed-up per fine-tuning seed (with a verdict over fine-tuning noise).
Across pretraining seeds the speed-up of a seed is the report's geometric mean over its fine-tuning seeds, and
those are summarised and judged by :mod:`hf_kd.core.uncertainty`, as the MLM-loss speed-ups are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.atomic import write_text_atomic
from ..core.errors import UserError
from ..core.uncertainty import INCONCLUSIVE, RULE, format_per_seed, format_spread, speedup_spread, spread_of, verdict
from .costs import CostModel, is_cached
from .protocol import Calibration

logger = logging.getLogger(__name__)

# Chosen by measuring the GLUE gap between a 400- and a 1,600-step tiny baseline against the spread over 3
# fine-tuning seeds (docs/glue.md, "GLUE from hf-kd reproduce"): STS-B at these settings separated them by 5.8
# points (every 1,600-step fine-tune above every 400-step one); SST-2 by 1.4 at twice the fine-tuning steps, and
# at glue_eval's BERT rates (2e-5) neither left chance level.
DEFAULT_TASKS = "stsb"
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_MAX_TRAIN_SAMPLES = 4000
DEFAULT_EPOCHS = 2.0
DEFAULT_LEARNING_RATE = 5e-4
COST_AXES = {"calibrated": "calibrated cost (baseline steps)", "gpu_hours": "measured GPU-hours (machine load can "
             "bend them)", "step": "optimizer steps"}


@dataclass(frozen=True)
class GlueSettings:
    """What ``--glue`` fine-tunes on, and how (each field is a flag of ``glue_eval.sweep``)."""

    glue_dir: str
    tasks: str = DEFAULT_TASKS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    max_train_samples: int | None = DEFAULT_MAX_TRAIN_SAMPLES
    epochs: float | None = DEFAULT_EPOCHS
    max_steps: int | None = None  # instead of epochs
    learning_rate: float | None = DEFAULT_LEARNING_RATE  # None: glue_eval's per-task table (BERT-size rates)
    use_cpu: bool = True

    def folder_name(self) -> str:
        """A results folder per configuration: glue_eval's report refuses a file mixing two of them."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.tasks.replace(',', '+')}-{digest}"

    def sweep_argv(self, runs: dict[str, str], results: Path, work: Path) -> list[str]:
        argv = ["-m", "glue_eval.sweep", "--runs", *runs.values(), "--run_names", *runs, "--results", str(results),
                "--output_dir", str(work), "--glue_dir", self.glue_dir, "--tasks", self.tasks,
                "--seeds", *map(str, self.seeds)]
        if self.max_train_samples:
            argv += ["--max_train_samples", str(self.max_train_samples)]
        argv += ["--max_steps", str(self.max_steps)] if self.max_steps else ["--num_train_epochs", str(self.epochs)]
        if self.learning_rate:
            argv += ["--learning_rate", str(self.learning_rate)]
        # the sweep's own progress bar and warnings, not each fine-tune's Trainer INFO lines
        return argv + ["--log_level", "warning"] + (["--use_cpu"] if self.use_cpu else [])


def keep_final_models(backend, jobs: list) -> None:
    """Make the runs keep their final weights; a run finished without them (trained before ``--glue``) is trained
    again (its result is forgotten): GLUE needs the model, not only the run's log."""
    backend.keep_models = True
    for job in jobs:
        run_dir = Path(job.run_dir)
        if job.variant is not None and (run_dir / "run_result.json").is_file() and not has_model(run_dir):
            logger.info("%s has no saved model (trained without --glue): training it again", run_dir.name)
            (run_dir / "run_result.json").unlink()


def has_model(run_dir: Path) -> bool:
    return (run_dir / "config.json").is_file() and (run_dir / "all_results.json").is_file() and any(
        (run_dir / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))


def save_final_model(trainer) -> None:
    """The final weights and what ``glue_eval`` reads about the run: ``all_results.json`` with its cumulative
    ``gpu_hours`` and its step kinds (``num_teachers``, ``kd_stop_step``, ``teacher_forwards``) for the
    calibrated cost axis."""
    trainer.save_model()
    teachers = len(trainer.teacher_names)
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    trainer.save_metrics("all", {"gpu_hours": trainer.cost_callback.meter.gpu_hours, "num_teachers": teachers,
                                 "kd_stop_step": trainer.kd_stop_step if teachers else 0,
                                 "teacher_forwards": trainer.teacher_forwards,
                                 "eval_loss": evals[-1] if evals else None})


def check_glue_dir(glue_dir: str, tasks: str) -> None:
    """Refuse (one line) a DIR without the tasks' GLUE files, before any training: asks glue_eval's own check."""
    code = ("import sys\nfrom glue_eval.data import check_glue_dir\nfrom glue_eval.tasks import resolve_tasks\n"
            "try:\n    check_glue_dir(sys.argv[1], resolve_tasks(sys.argv[2]))\n"
            "except (ValueError, OSError) as e:\n    print(e, file=sys.stderr); sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code, glue_dir, tasks], capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["glue_eval is not importable"])[-1]
        raise UserError(f"--glue {glue_dir} --glue_tasks {tasks} is invalid: {why.replace('--glue_dir ', '')}")


def _weights(run_dir: str) -> dict:
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in Path(run_dir).glob("*")
            if f.name in ("model.safetensors", "pytorch_model.bin")}


def drop_stale_lines(results: Path) -> None:
    """Forget the fine-tunes of weights that were since retrained (a run rerun with other settings): the sweep
    would add lines for the new weights beside them, and the report refuses two versions of one entry."""
    if not results.is_file():
        return
    lines = [x for x in results.read_text().splitlines(keepends=True) if x.strip()]
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a cut last line: the sweep itself cuts it off
            keep.append(line)
            continue
        model = (rec.get("config") or {}).get("model") or {}
        if "weights" not in model or model["weights"] == _weights(rec.get("run_path", "")):
            keep.append(line)
    if len(keep) < len(lines):
        logger.info("%s: %d fine-tune(s) of since retrained runs dropped", results, len(lines) - len(keep))
        write_text_atomic(results, "".join(keep))


def step_costs_arg(calibration: Path) -> str | None:
    """``--step_costs`` for glue_eval.report from the run's calibration: the step kinds glue_eval charges (``base``,
    ``kd<k>``, ``post``); other kinds a calibration may hold (teacher-output caches) are not its to read."""
    relative = json.loads(calibration.read_text()).get("relative") or {}
    kept = {k: v for k, v in relative.items() if re.fullmatch(r"base|post|kd\d*", k)}
    return ",".join(f"{k}={v!r}" for k, v in kept.items()) if "base" in kept else None


def _call(argv: list[str], what: str, capture: bool = False) -> None:
    """Run ``python <argv>``; a failure is one line naming the command to rerun by hand."""
    done = subprocess.run([sys.executable, *argv], capture_output=capture, text=True)
    if done.returncode:
        tail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise UserError(f"{what} failed (exit {done.returncode}){': ' + tail[0] if tail else ''}; expected it to "
                        f"finish: rerun `python {' '.join(argv)}` to see why")


@dataclass
class RunScore:
    """A run's final model on GLUE at one pretraining seed: mean and sd over fine-tuning seeds, and its cost."""

    score: float | None
    std: float | None
    n: int
    cost: float | None


@dataclass
class FineTuneSpeedups:
    """A run's budget-frontier speed-up on GLUE at one pretraining seed, one value per fine-tuning seed, and the
    report's verdict over fine-tuning noise alone."""

    values: list[float | None]
    bounds: list[str]
    verdict: str
    no_signal: str = ""

    def seed_value(self) -> tuple[float | None, str]:
        """The pretraining seed's speed-up: the geometric mean over its fine-tuning seeds (a bound if any is; no
        value when bounds point both ways or a seed has none)."""
        s = speedup_spread(list(zip(self.values, self.bounds or ["="] * len(self.values))))
        if s.missing or s.mean is None:
            return None, ""
        marks = set(s.bounds) - {"="}
        return (None, "") if len(marks) > 1 else (s.mean, marks.pop() if marks else "=")


@dataclass
class SeedGlue:
    """What ``glue_eval.report`` says about one pretraining seed's runs (kept in results.json's ``glue``)."""

    seed: int
    metric: str
    cost_axis: str
    scores: dict[str, RunScore]
    frontier: dict[str, FineTuneSpeedups]
    report: str  # its report.md, relative to the output folder
    fine_tuning_seeds: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> SeedGlue:
        return cls(d["seed"], d["metric"], d["cost_axis"], {k: RunScore(**v) for k, v in d["scores"].items()},
                   {k: FineTuneSpeedups(**v) for k, v in d["frontier"].items()}, d["report"],
                   d.get("fine_tuning_seeds", ""))


def read_report(path: Path, seed: int, out: Path) -> SeedGlue:
    """One pretraining seed from its report.json: GLUE score and cost of each run's final model, frontier speed-ups."""
    rep = json.loads(path.read_text())
    scores = {r["run"]: RunScore(r["mean"], r["std"], r["n"], r["cost"])
              for r in rep["rows"] if r["checkpoint"] == "final"}
    frontier = {}
    for s in rep["speedups"]:
        f = s.get("frontier") or {}
        frontier[s["run"]] = FineTuneSpeedups(f.get("per_seed", []), f.get("bounds", []),
                                              f.get("verdict", INCONCLUSIVE), s.get("no_signal", ""))
    return SeedGlue(seed, rep["ylabel"], rep["cost_axis"], scores, frontier,
                    str(path.with_name("report.md").relative_to(out)), rep["seeds"])


def amortised(seed_glue: SeedGlue, runs: list, calibration: Calibration) -> SeedGlue:
    """``seed_glue`` with each cached run charged its amortised cost (the MLM verdicts' view, :mod:`.costs`), not
    what glue_eval charges it (glue_eval knows live teacher steps only). A frontier speed-up is the frontier's cost
    for the run's score over the run's own cost, so it scales exactly by (glue_eval's cost / amortised cost)."""
    costs = CostModel(calibration, runs)
    for r in runs:
        score = seed_glue.scores.get(r.variant)
        if r.seed != seed_glue.seed or not is_cached(r) or score is None or not score.cost:
            continue
        cost = costs.cost(r, r.steps, "amortised")
        factor = score.cost / cost
        score.cost = cost
        f = seed_glue.frontier.get(r.variant)
        if f is not None:
            f.values = [None if v is None else v * factor for v in f.values]
    return seed_glue


def run_glue(settings: GlueSettings, runs: list, out: Path, calibration: Calibration | None) -> dict:
    """Sweep and report each pretraining seed's final models; returns results.json's ``glue`` entry."""
    has_calibration = calibration is not None
    per_seed = []
    for seed in sorted({r.seed for r in runs}):
        mine = [r for r in runs if r.seed == seed and r.role in ("student", "frontier")]
        names = {r.variant: str(Path(r.run_dir).resolve()) for r in mine}
        folder = out / "glue" / settings.folder_name() / f"seed{seed}"
        results = folder / "results.jsonl"
        drop_stale_lines(results)
        logger.info("GLUE: fine-tuning the final models of pretraining seed %d (%d runs) on %s", seed, len(names),
                    settings.tasks)
        _call(settings.sweep_argv(names, results, folder / "work"), f"GLUE sweep of pretraining seed {seed}")
        frontier = ["baseline"] + [r.variant for r in mine if r.role == "frontier"]
        report = ["-m", "glue_eval.report", str(results), "--baseline", "baseline", "--frontier", *frontier,
                  "--output_dir", str(folder / "report")]
        costs = step_costs_arg(out / "calibration.json") if has_calibration else None
        if costs:
            report += ["--step_costs", costs]
        _call(report, f"GLUE report of pretraining seed {seed}", capture=True)
        seed_glue = read_report(folder / "report" / "report.json", seed, out)
        per_seed.append(amortised(seed_glue, runs, calibration) if has_calibration else seed_glue)
    return {"settings": asdict(settings), "seeds": [asdict(s) for s in per_seed]}


@dataclass
class GlueRow:
    """One variant's GLUE summary over pretraining seeds."""

    score: dict
    cost: dict
    frontier: dict
    verdict: str
    reason: str


def summarise(seeds: list[SeedGlue]) -> dict[str, GlueRow]:
    """Per variant: GLUE score and calibrated cost (mean over pretraining seeds), frontier speed-up and verdict."""
    names = list(dict.fromkeys(n for s in seeds for n in s.scores))
    out = {}
    for name in names:
        scores = [s.scores.get(name) for s in seeds]
        score = spread_of([(x.score if x else None, "=") for x in scores]).to_dict()
        cost = spread_of([(x.cost if x else None, "=") for x in scores]).to_dict()
        pairs = [s.frontier[name].seed_value() if name in s.frontier else (None, "") for s in seeds]
        spread = speedup_spread(pairs)
        v, why = verdict(spread) if any(name in s.frontier for s in seeds) else ("", "")
        out[name] = GlueRow(score, cost, spread.to_dict(), v, why)
    return out


def _num(d: dict, digits: int = 2) -> str:
    if d["mean"] is None:
        return "no value"
    return f"{d['mean']:.{digits}f}" + (f" ± {d['std']:.{digits}f}" if d["n"] > 1 else "")


def agreement(rows: dict[str, GlueRow], mlm_verdicts: dict[str, str]) -> str:
    """One line: whether each KD variant's MLM-loss and GLUE verdicts agree."""
    judged = [n for n, r in rows.items() if r.verdict and n in mlm_verdicts]
    if not judged:
        return "MLM-loss and GLUE verdicts: no KD variant to compare."
    same = [n for n in judged if rows[n].verdict == mlm_verdicts[n]]
    parts = [f"{n} (MLM loss {mlm_verdicts[n]}, GLUE {rows[n].verdict})" for n in judged]
    head = "agree" if len(same) == len(judged) else "agree for none" if not same else \
        f"agree for {len(same)} of {len(judged)}"
    return f"MLM-loss and GLUE verdicts {head}: {'; '.join(parts)}."


def glue_section(glue: dict, mlm_verdicts: dict[str, str]) -> tuple[dict, str]:
    """The report's GLUE section (markdown) and its summary for results.json, from results.json's ``glue`` entry."""
    seeds = [SeedGlue.from_dict(s) for s in glue["seeds"]]
    rows = summarise(seeds)
    first, st = seeds[0], glue["settings"]
    budget = f"{st['max_steps']} steps" if st["max_steps"] else f"{st['epochs']:g} epoch(s)"
    if st.get("learning_rate"):
        budget += f", learning rate {st['learning_rate']:g}"
    caps = f", {st['max_train_samples']} training rows per task" if st["max_train_samples"] else ""
    axis = first.cost_axis
    lines = ["## GLUE (fine-tuned final models)", "",
             f"Each run's final model fine-tuned by `glue_eval.sweep` on {st['tasks']} ({budget}{caps}, fine-tuning "
             f"seeds {', '.join(map(str, st['seeds']))}) from `{st['glue_dir']}`, per pretraining seed; quality: "
             f"{first.metric}, mean over fine-tuning seeds (higher is better). Cost: {COST_AXES.get(axis, axis)}. "
             "Only final models "
             "are fine-tuned, so GLUE has the budget-frontier speed-up only (no paper-style curve).", "",
             "| variant | GLUE (mean ± sd over pretraining seeds) | cost (mean) | frontier speed-up on GLUE | "
             "GLUE verdict |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        speed = format_spread(r.frontier) if r.verdict else ""
        cost = "no value" if r.cost["mean"] is None else f"{r.cost['mean']:.0f}"
        lines.append(f"| {name} | {_num(r.score)} | {cost} | {speed} | {r.verdict} |")
    lines += ["", f"Verdicts: budget-frontier speed-up on GLUE across pretraining seeds (each seed: the geometric "
              f"mean over its fine-tuning seeds); {RULE}."]
    if any(r.verdict for r in rows.values()):
        lines += ["", "Per pretraining seed (GLUE frontier speed-up; in brackets the fine-tuning seeds' values and "
                  "the verdict over fine-tuning noise alone):"]
    for name, r in rows.items():
        if not r.verdict:
            continue
        per = []
        for s in seeds:
            f = s.frontier.get(name)
            if f is None:
                continue
            ft = f.no_signal or format_per_seed(speedup_spread(list(zip(f.values, f.bounds))).to_dict())
            v, b = f.seed_value()
            shown = "no value" if v is None else format_spread(speedup_spread([(v, b)]))
            per.append(f"seed {s.seed} {shown} ({ft}: {f.verdict})")
        lines.append(f"- {name}: {'; '.join(per)} — {r.reason}")
    lines += ["", agreement(rows, mlm_verdicts), "",
              "Reports of `glue_eval.report` per pretraining seed: "
              + ", ".join(f"`{s.report}`" for s in seeds), ""]
    summary = {n: asdict(r) for n, r in rows.items()}
    return summary, "\n".join(lines)
