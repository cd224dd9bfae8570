"""Resumable, optionally parallel execution of the protocol's trainings (teachers first, then students).

* A finished run is recognised by its ``run_result.json`` (written atomically after the final evaluation) whose
  ``key`` matches what the run would be now (preset, corpus, variant, seed, steps, teachers): it is reused.
  Keys are compared on what shapes the training (:func:`comparable`): a run without teachers ignores the KD
  settings, the budget it is a frontier point of and its variant's name, so a 800-step baseline is one run
  whether it is the 2x point of a 400-step protocol or the 1x baseline of an 800-step one (the regime study
  shares them across its cells); no run depends on the frontier list.
* A half-finished run resumes from its newest complete checkpoint.
* With ``workers > 1`` the trainings go to that many spawned processes, each with ``threads`` torch threads
  (on 2 CPU cores two single-thread trainings side by side finish the grid in about half the time).
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from ..core.atomic import write_text_atomic
from ..core.cache_format import MANIFEST
from .calibrate import estimate_seconds
from .presets import TEACHER_BUDGETS
from .protocol import Calibration, Job, RunRecord, TaskBackend, TeacherRecord

logger = logging.getLogger(__name__)
RESULT = "run_result.json"


@dataclass
class Context:
    """What every job needs: the task's back end (sent to workers as is: see ``TaskBackend.for_workers``)."""

    backend: TaskBackend
    save_every: int | None = None
    progress: bool = True  # a progress bar per training only in-process: parallel workers' bars would interleave


def run_key(ctx: Context, job: Job, teachers: dict[str, TeacherRecord]) -> dict:
    v = job.variant
    key = {**ctx.backend.key, "variant": asdict(v), "seed": job.seed, "steps": job.steps,
           "teachers": [asdict(teachers[t]) for t in v.teachers]}
    return json.loads(json.dumps(key, default=str))  # as it reads back from run_result.json (tuples -> lists)


# Preset fields that do not change a training without teachers (the KD knobs, the protocol's budget and
# frontier: the run's own step count is in the key).
KD_ONLY_FIELDS = ("steps", "frontier", "kd_alpha", "kd_temperature", "kd_positions", "recycled_teacher",
                  "cache_top_k", "kd_learning_rate")


def comparable(key: dict) -> dict:
    """``key`` without what does not shape the run (applied to saved and new keys alike: old results match).

    Preset fields set to ``None`` are dropped too: a field added later with a ``None`` default (meaning "as
    before") leaves the results saved before it recognised."""
    key = json.loads(json.dumps(key))
    preset = key.get("preset", {})
    preset.pop("frontier", None)  # which frontier points a protocol draws changes no single run
    # a teacher's budget is in the records of the teachers the run reads (the poor teacher's shapes no KD run
    # from the good one)
    for k in [k for k, value in preset.items() if value is None or k in TEACHER_BUDGETS]:
        del preset[k]
    if not key.get("teachers"):
        for k in KD_ONLY_FIELDS:
            preset.pop(k, None)
        key.pop("variant", None)  # its name, budget and role: the run is steps + seed + preset
    return key


def finished(run_dir: Path, key: dict, quiet: bool = False) -> dict | None:
    """The saved result of a finished run with this ``key`` (compared by :func:`comparable`), else ``None``."""
    f = run_dir / RESULT
    if f.is_file():
        saved = json.loads(f.read_text())
        if comparable(saved.get("key") or {}) == comparable(key):
            return saved["run"]
        if not quiet:
            logger.info("%s was run with other settings: training it again", run_dir.name)
    return None


def run_job(ctx: Context, job: Job, teachers: dict[str, TeacherRecord]) -> TeacherRecord | RunRecord:
    """Train ``job`` unless already finished; returns a teacher's (or cache's) record or a student's run record."""
    if job.variant is None and job.cache is not None:
        return ctx.backend.ensure_teacher_outputs(job.cache, [teachers[t] for t in job.cache.teachers],
                                                  progress=ctx.progress)
    if job.variant is None:
        return ctx.backend.ensure_teacher(job.name, progress=ctx.progress)
    v, run_dir = job.variant, Path(job.run_dir)
    key = run_key(ctx, job, teachers)
    done = finished(run_dir, key)
    if done is not None:  # possibly made for another role (a frontier point reused as a 1x baseline)
        return replace(RunRecord.from_dict(done), variant=v.name, role=v.role)
    started = run_dir / "run_key.json"  # what the checkpoints in run_dir were trained for
    resumable = started.is_file() and comparable(json.loads(started.read_text())) == comparable(key)
    if run_dir.is_dir() and not (resumable and ctx.backend.has_checkpoint(run_dir)):
        shutil.rmtree(run_dir)  # nothing to resume from, or made with other settings: start clean
    run_dir.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(key))
    outcome = ctx.backend.train(job, [teachers[t].path for t in v.teachers], ctx.save_every, progress=False)
    run = RunRecord(variant=v.name, role=v.role, seed=job.seed, steps=job.steps, run_dir=str(run_dir),
                    teachers=list(v.teachers), kd_stop_ratio=v.kd_stop_ratio, selection=v.selection,
                    teacher_forwards=outcome.teacher_forwards, log_history=outcome.log_history,
                    teacher_outputs=v.outputs, cache=job.cache.name if job.cache else "")
    for ckpt in run_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)  # finished: the result and the run's log are what count
    write_text_atomic(run_dir / RESULT, json.dumps({"key": key, "run": run.to_dict()}, default=str))
    return run


def to_train(jobs: list[Job], ctx: Context, teachers: dict[str, TeacherRecord] | None = None) -> list[Job]:
    """The student jobs not finished yet: no result saved under the key they would have now (teachers not
    trained yet make a key that cannot match: their runs are counted as to train)."""
    out = []
    for j in jobs:
        if j.variant is None:
            continue
        known = all(t in (teachers or {}) for t in j.variant.teachers)
        if not known or finished(Path(j.run_dir), run_key(ctx, j, teachers), quiet=True) is None:
            out.append(j)
    return out


def evaluations(steps: int, every: int) -> int:
    """Evaluations of a ``steps``-step run evaluated every ``every`` steps (and at its end: a curve's last point)."""
    return -(-steps // max(1, every)) if steps else 0


def log_plan(jobs: list[Job], ctx: Context, calibration: Calibration, workers: int,
             calibration_seconds: float = 0.0) -> float:
    """Log what will be trained (finished runs excluded) and the time it should take here; returns seconds."""
    backend = ctx.backend
    teacher_jobs = [j for j in jobs if j.variant is None and j.cache is None]
    peeked = {j.name: backend.peek_teacher(j.name) for j in teacher_jobs}
    todo = to_train(jobs, ctx, {n: t for n, t in peeked.items() if t is not None})
    runs = [RunRecord(j.name, j.variant.role, j.seed, j.steps, j.run_dir, list(j.variant.teachers),
                      j.variant.kd_stop_ratio, j.variant.selection, 0, [], j.variant.outputs,
                      j.cache.name if j.cache else "") for j in todo]
    teachers = [backend.teacher_steps_to_train(j.name) for j in teacher_jobs]
    # a finished cache made from a teacher that must still be (re)trained is produced again: the new teacher's
    # fingerprint cannot match the one its manifest holds
    untrained = {n for n, t in peeked.items() if t is None}
    caches = [j.cache for j in jobs if j.variant is None and j.cache is not None
              and (not (Path(j.cache.folder) / MANIFEST).is_file() or untrained & set(j.cache.teachers))]
    n_evals = sum(evaluations(r.steps, backend.preset.eval_every) for r in runs) + \
        sum(evaluations(s, backend.teacher_eval_every(s)) for s in teachers)
    names = sorted({j.name for j in jobs if j.variant is not None})
    seeds = sorted({j.seed for j in jobs if j.variant is not None})
    sec = estimate_seconds(runs, sum(teachers), calibration, workers, n_evals, calibration_seconds, caches)
    logger.info("plan: %d variants (%s) x seeds %s; to train now: %d runs + %d teacher steps + %d teacher-output "
                "cache(s), %d worker(s); "
                "estimated %.1f min here (calibration %.0f s; %.3f s per baseline step, %.2f s per evaluation x %d "
                "evaluations)", len(names), ", ".join(names), seeds, len(runs), sum(teachers), len(caches), workers, sec / 60,
                calibration_seconds, calibration.seconds_per_step["base"], calibration.seconds_per_evaluation, n_evals)
    return sec


def _init_worker(threads: int) -> None:
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # checkpoint writes would draw bars over the parent's
    try:
        import huggingface_hub

        huggingface_hub.utils.disable_progress_bars()
    except (ImportError, AttributeError):  # older hub versions: only cosmetic
        pass
    logging.getLogger("hf_kd").setLevel(logging.WARNING)


def execute(jobs: list[Job], ctx: Context, workers: int = 1, threads: int = 1
            ) -> tuple[dict[str, TeacherRecord], list[RunRecord]]:
    """Run teachers, then the jobs that need them, ``workers`` at a time; returns (teachers, runs in job order)."""
    teachers: dict[str, TeacherRecord] = {}
    results: dict[int, RunRecord] = {}
    todo = list(enumerate(jobs))
    bar = tqdm(total=len(jobs), desc="trainings")

    def ready(job: Job) -> bool:
        return all(t in teachers for t in job.needs)

    def done(i: int, job: Job, res) -> None:
        if job.variant is None:
            teachers[job.name] = res
        else:
            results[i] = res
        bar.set_postfix_str(f"{job.name} done" + (f" seed {job.seed}" if job.variant else " (teacher)"))
        bar.update()

    if workers <= 1:
        for i, job in sorted(todo, key=lambda ij: ij[1].variant is not None):  # teachers first
            bar.set_postfix_str(f"training {job.name}" + (f" seed {job.seed}" if job.variant else " (teacher)"))
            done(i, job, run_job(ctx, job, teachers))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            running = {}
            while todo or running:
                for i, job in [ij for ij in todo if ready(ij[1])]:
                    running[pool.submit(run_job, ctx, job, dict(teachers))] = (i, job)
                    todo.remove((i, job))
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    i, job = running.pop(fut)
                    try:
                        done(i, job, fut.result())
                    except BaseException:
                        # one training failed: drop the queued ones (finished runs are kept for the rerun)
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
    bar.close()
    return teachers, [results[i] for i in sorted(results)]
