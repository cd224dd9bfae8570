"""Fine-tune every checkpoint of pretraining runs on GLUE: one results line per (run, checkpoint, task, seed).

Offline (CPU smoke run on the original GLUE files)::

    python -m glue_eval.sweep --runs runs/baseline runs/kd --tasks rte --seeds 0 1 2 \\
        --glue_dir ../shared/data/glue --max_train_samples 256 --max_steps 20 --results glue/results.jsonl

Full GLUE on GPUs::

    accelerate launch --num_processes 8 -m glue_eval.sweep --runs runs/bert-base runs/bert-base-kd \\
        --tasks all --seeds 0 1 2 --bf16 --results glue/results.jsonl

Each line carries the checkpoint's pretraining ``step`` and cumulative ``gpu_hours`` (the last ``gpu_hours``
logged at or before that step in its ``trainer_state.json``; the final model's from ``all_results.json``).
Interrupted? Rerun the same command: finished entries are skipped, none is duplicated or lost.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_kd.core.cli_utils import parse_args, run_cli

from .finetune import FinetuneArguments, evaluate_model
from .results import ResultsFile
from .run_glue import is_main_process

logger = logging.getLogger(__name__)


@dataclass
class SweepArguments:
    runs: list[str] = field(metadata={"help": "Pretraining run folders (holding checkpoint-*/ and the final model)."})
    results: str = field(metadata={"help": "JSON-lines results file, appended to (resumable)."})
    work_dir: str | None = field(default=None, metadata={"help": "Fine-tuning scratch folder (default: next to "
                                                         "the results file)."})
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
    if "train_seconds" in attrs and "num_processes" in attrs:
        return float(attrs["train_seconds"]) * int(attrs["num_processes"]) / 3600.0
    raise ValueError(f"{where}: trainer_state.json logs no gpu_hours at or before step {step}; expected a "
                     "pretraining run with --logging_steps (or --eval_steps) <= --save_steps")


def find_checkpoints(run_dir: str | Path, include_final: bool = True) -> list[Checkpoint]:
    """Every ``checkpoint-<step>`` of a run (by step) and its final model, each with step and GPU-hours."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"--runs {str(run_dir)!r} is not a folder; expected a pretraining run folder")
    name = run.resolve().name
    found = []
    ckpts = [p for p in run.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for ck in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1])):
        state = _read_json(ck / "trainer_state.json")
        step = int(state.get("global_step", ck.name.split("-")[-1]))
        found.append(Checkpoint(name, ck.name, ck, step, gpu_hours_at(state, step, str(ck))))
    if include_final and (run / "config.json").is_file():
        results = _read_json(run / "all_results.json")
        state = json.loads((run / "trainer_state.json").read_text()) if (run / "trainer_state.json").is_file() else {}
        step = int(state.get("global_step", max((c.step for c in found), default=0)))
        if "gpu_hours" not in results:
            raise ValueError(f"{str(run / 'all_results.json')!r} has no gpu_hours; expected an hf-kd pretraining run")
        if any(c.step == step for c in found):
            logger.info("%s: final model is checkpoint-%d (same step), not fine-tuned twice", name, step)
        else:
            found.append(Checkpoint(name, "final", run, step, float(results["gpu_hours"])))
    if not found:
        raise FileNotFoundError(f"--runs {str(run_dir)!r} holds no checkpoint-* folder and no final model "
                                "(config.json); expected a pretraining run folder")
    return found


def sweep(sargs: SweepArguments, fargs: FinetuneArguments) -> list[dict]:
    """Validate all runs and tasks first, then fine-tune every entry not yet in the results file."""
    tasks = fargs.validate()
    if not sargs.runs:
        raise ValueError("--runs is empty; expected one or more pretraining run folders")
    checkpoints = [c for r in sargs.runs for c in find_checkpoints(r, sargs.include_final)]
    names = [Path(r).resolve().name for r in sargs.runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"two --runs are both named {dup!r}; expected run folders with distinct names")
    results = ResultsFile(sargs.results, writer=is_main_process())
    work = Path(sargs.work_dir) if sargs.work_dir else Path(sargs.results).with_suffix(".work")
    written = []
    for c in checkpoints:
        record = {"run": c.run, "checkpoint": c.checkpoint, "step": c.step, "gpu_hours": c.gpu_hours}
        written += evaluate_model(str(c.path), fargs, results, record, work, tasks)
    logger.info("sweep done: %d new entries, %d in %s", len(written), len(results.records), sargs.results)
    return written


def main(argv: list[str] | None = None) -> list[dict] | int:
    """With ``argv`` (tests): the new result lines, errors raised. Without (console): exit status."""
    if argv is None:
        return run_cli(lambda: main(sys.argv[1:]))
    sargs, fargs = parse_args((SweepArguments, FinetuneArguments), argv)
    return sweep(sargs, fargs)


if __name__ == "__main__":
    sys.exit(main())
