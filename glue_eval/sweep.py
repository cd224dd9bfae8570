"""Fine-tune every checkpoint of pretraining runs on GLUE: one results line per fine-tune.

After the README's pretraining walk-through (``runs/baseline``, ``runs/kd``), on a folder of the original GLUE
download that you provide (CPU smoke run)::

    python -m glue_eval.sweep --runs runs/baseline runs/kd --tasks rte --seeds 0 1 2 \\
        --glue_dir data/glue --max_train_samples 256 --max_steps 20 --use_cpu --results glue/results.jsonl

Full GLUE on GPUs (data from the Hub's ``nyu-mll/glue``)::

    accelerate launch --num_processes 8 -m glue_eval.sweep --runs runs/baseline runs/kd \\
        --tasks all --seeds 0 1 2 --bf16 --results glue/results.jsonl

Every checkpoint is checked before the first fine-tune: one without model weights or without
``trainer_state.json`` (still being written) is skipped with one warning line. Each line carries the
checkpoint's pretraining ``step`` and cumulative ``gpu_hours`` (the last ``gpu_hours`` logged at or before
that step in its ``trainer_state.json``; the final model's from ``all_results.json``). One progress bar counts
the fine-tunes of the whole sweep. Interrupted? Rerun the same command: finished entries are skipped.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_kd.core.cli_utils import run_cli

from .args import FinetuneArguments, GlueArguments, parse_glue_args
from .finetune import run_jobs
from .plan import plan_model, validate, weight_files
from .results import ResultsFile, check_run_names
from .run_glue import is_main_process

logger = logging.getLogger(__name__)


@dataclass
class SweepArguments:
    """Which pretraining runs to sweep and where the results go (fine-tune scratch: ``--output_dir``)."""

    runs: list[str] = field(metadata={"help": "Pretraining run folders (holding checkpoint-*/ and the final model)."})
    results: str = field(metadata={"help": "JSON-lines results file, appended to (resumable). Fine-tune scratch "
                                   "folders go to --output_dir if given, else next to this file."})
    run_names: list[str] | None = field(default=None, metadata={"help": "Names of the runs in the results (one per "
                                                                "--runs); default the folders' names."})
    include_final: bool = field(default=True, metadata={"help": "Also fine-tune the final model in the run folder "
                                                        "(skipped when a checkpoint has the same step)."})


@dataclass
class Checkpoint:
    run: str
    checkpoint: str  # "checkpoint-<step>" or "final"
    path: Path
    step: int
    gpu_hours: float


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing; expected it in every pretraining checkpoint/run")
    return json.loads(path.read_text())


def incomplete_reason(folder: Path, needs_state: bool = True) -> str:
    """Why ``folder`` cannot be fine-tuned yet ("" if it can): no config, no weights, no trainer state."""
    if not (folder / "config.json").is_file():
        return "no config.json"
    if not weight_files(folder):
        return "no model weights (model.safetensors / pytorch_model.bin, or a shard of its index)"
    if needs_state and not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json (still being written?)"
    return ""


def gpu_hours_at(state: dict, step: int, where: str) -> float:
    """The last ``gpu_hours`` in ``log_history`` at or before ``step``; else the cost state the checkpoint carries."""
    logged = [(int(e.get("step", 0)), float(e["gpu_hours"])) for e in state.get("log_history", []) if "gpu_hours" in e]
    earlier = [g for s, g in logged if s <= step]
    if earlier:
        return earlier[-1]
    saved = (state.get("stateful_callbacks") or {}).get("CostCallback")
    saved = saved[0] if isinstance(saved, list) and saved else saved
    attrs = (saved or {}).get("attributes", {}) if isinstance(saved, dict) else {}
    if "gpu_hours" in attrs:
        return float(attrs["gpu_hours"])
    if "gpu_seconds" in attrs:
        return float(attrs["gpu_seconds"]) / 3600.0
    if "train_seconds" in attrs and "num_processes" in attrs:
        return float(attrs["train_seconds"]) * int(attrs["num_processes"]) / 3600.0
    raise ValueError(f"{where}: trainer_state.json logs no gpu_hours at or before step {step}; expected a "
                     "pretraining run with --logging_steps (or --eval_steps) <= --save_steps")


def _skip(path: Path, reason: str) -> None:
    logger.warning("skipping %s: %s", path, reason)


def find_checkpoints(run_dir: str | Path, include_final: bool = True, name: str | None = None) -> list[Checkpoint]:
    """Every complete ``checkpoint-<step>`` of a run (by step) and its final model, with step and GPU-hours.

    Incomplete ones (:func:`incomplete_reason`) are skipped with one warning line each.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"--runs {str(run_dir)!r} is not a folder; expected a pretraining run folder")
    name = name or run.resolve().name
    found = []
    ckpts = [p for p in run.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for ck in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1])):
        reason = incomplete_reason(ck)
        if reason:
            _skip(ck, reason)
            continue
        state = _read_json(ck / "trainer_state.json")
        step = int(state.get("global_step", ck.name.split("-")[-1]))
        found.append(Checkpoint(name, ck.name, ck, step, gpu_hours_at(state, step, str(ck))))
    if include_final and (run / "config.json").is_file():
        reason = incomplete_reason(run, needs_state=False) or (
            "" if (run / "all_results.json").is_file() else "no all_results.json (training not finished?)")
        if reason:
            _skip(run, f"final model: {reason}")
        else:
            _add_final(run, name, found)
    if not found:
        raise FileNotFoundError(f"--runs {str(run_dir)!r} holds no complete checkpoint-* folder and no final model "
                                "(config.json + weights); expected a pretraining run folder")
    return found


def _add_final(run: Path, name: str, found: list[Checkpoint]) -> None:
    results = _read_json(run / "all_results.json")
    state = json.loads((run / "trainer_state.json").read_text()) if (run / "trainer_state.json").is_file() else {}
    step = int(state.get("global_step", max((c.step for c in found), default=0)))
    if "gpu_hours" not in results:
        raise ValueError(f"{str(run / 'all_results.json')!r} has no gpu_hours; expected an hf-kd pretraining run")
    if any(c.step == step for c in found):
        logger.info("%s: final model is checkpoint-%d (same step), not fine-tuned twice", name, step)
    else:
        found.append(Checkpoint(name, "final", run, step, float(results["gpu_hours"])))


def _run_names(sargs: SweepArguments) -> dict[str, str]:
    """Run name -> resolved run folder; refuses a name given twice."""
    if not sargs.runs:
        raise ValueError("--runs is empty; expected one or more pretraining run folders")
    if sargs.run_names is not None and len(sargs.run_names) != len(sargs.runs):
        raise ValueError(f"--run_names has {len(sargs.run_names)} names for {len(sargs.runs)} --runs; expected one "
                         "name per run")
    names = sargs.run_names or [Path(r).resolve().name for r in sargs.runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"two --runs are both named {dup!r}; expected run folders with distinct names (or "
                         "--run_names)")
    return {n: str(Path(r).resolve()) for n, r in zip(names, sargs.runs)}


def run_sweep(sargs: SweepArguments, gargs: GlueArguments, fargs: FinetuneArguments) -> list[dict]:
    """Validate all runs, checkpoints and tasks first, then fine-tune every entry not yet in the results file.

    Returns the lines written by this call.
    """
    tasks = validate(gargs, fargs)
    names = _run_names(sargs)
    checkpoints = [c for n, r in zip(names, sargs.runs) for c in find_checkpoints(r, sargs.include_final, n)]
    results = ResultsFile(sargs.results, writer=is_main_process())
    check_run_names(results.records, names, sargs.results)
    work = Path(fargs.output_dir) if "output_dir" in fargs.given else Path(sargs.results).with_suffix(".work")
    jobs = []
    for c in checkpoints:
        record = {"run": c.run, "checkpoint": c.checkpoint, "step": c.step, "gpu_hours": c.gpu_hours,
                  "run_path": names[c.run]}
        jobs += plan_model(str(c.path), record, gargs, fargs, tasks, work)
    written = run_jobs(jobs, gargs, fargs, results, show_progress=is_main_process())
    logger.info("sweep done: %d new entries, %d in %s", len(written), len(results.records), sargs.results)
    return written


def main(argv: list[str] | None = None) -> list[dict] | int:
    """With ``argv`` (tests): the new result lines, errors raised. Without (console): exit status."""
    if argv is None:
        return run_cli(lambda: main(sys.argv[1:]))
    return run_sweep(*parse_glue_args((SweepArguments,), argv))


if __name__ == "__main__":
    sys.exit(main())
