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
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
RESULT = "run_result.json"


@dataclass
class Job:
    """One training: a teacher (``variant is None``) or a student/frontier run of ``variant`` with ``seed``."""

    name: str
    seed: int = 0
    steps: int = 0
    variant: object = None
    run_dir: str = ""
    needs: tuple[str, ...] = field(default_factory=tuple)  # teacher names that must exist first


@dataclass
class Context:
    """What every job needs: the preset, the corpus (in memory, or saved at ``corpus_dir`` for workers)."""

    preset: object
    corpus: object = None
    corpus_dir: str | None = None
    save_every: int | None = None
    key: dict = field(default_factory=dict)  # preset + corpus fingerprint, part of every run's key
    report_to: str = "none"  # the students' tracker (not part of the key: it does not change a result)


_WORKER_CORPUS: dict[str, object] = {}


def _corpus(ctx: Context):
    if ctx.corpus is not None:
        return ctx.corpus
    if ctx.corpus_dir not in _WORKER_CORPUS:
        from .corpus import load_saved_corpus

        _WORKER_CORPUS[ctx.corpus_dir] = load_saved_corpus(Path(ctx.corpus_dir))
    return _WORKER_CORPUS[ctx.corpus_dir]


def run_key(ctx: Context, job: Job, teachers: dict) -> dict:
    v = job.variant
    key = {**ctx.key, "variant": asdict(v), "seed": job.seed, "steps": job.steps,
           "teachers": [teachers[t] for t in v.teachers]}
    return json.loads(json.dumps(key, default=str))  # as it reads back from run_result.json (tuples -> lists)


# Preset fields that do not change a training without teachers (the KD knobs, the teachers' budgets, the
# protocol's budget and frontier: the run's own step count is in the key).
KD_ONLY_FIELDS = ("steps", "frontier", "kd_alpha", "kd_temperature", "kd_positions", "good_teacher_steps",
                  "second_teacher_steps", "poor_teacher_steps", "recycled_teacher")


def comparable(key: dict) -> dict:
    """``key`` without what does not shape the run (applied to saved and new keys alike: old results match)."""
    key = json.loads(json.dumps(key))
    preset = key.get("preset", {})
    preset.pop("frontier", None)  # which frontier points a protocol draws changes no single run
    if not key.get("teachers"):
        for k in KD_ONLY_FIELDS:
            preset.pop(k, None)
        key.pop("variant", None)  # its name, budget and role: the run is steps + seed + preset
    return key


def finished(run_dir: Path, key: dict) -> dict | None:
    """The saved result of a finished run with this ``key`` (compared by :func:`comparable`), else ``None``."""
    f = run_dir / RESULT
    if f.is_file():
        saved = json.loads(f.read_text())
        if comparable(saved.get("key") or {}) == comparable(key):
            return saved["run"]
        logger.info("%s was run with other settings: training it again", run_dir.name)
    return None


def run_job(ctx: Context, job: Job, teachers: dict) -> dict:
    """Train ``job`` unless already finished; returns a teacher's ``{path, meta}`` or a student's run entry."""
    from . import text

    corpus = _corpus(ctx)
    if job.variant is None:
        # a progress bar per training only in-process: parallel workers' bars would interleave
        path, meta = text.ensure_teacher(job.name, ctx.preset, corpus, progress=ctx.corpus is not None)
        return {"path": str(path), "meta": meta}
    v, run_dir = job.variant, Path(job.run_dir)
    key = run_key(ctx, job, teachers)
    done = finished(run_dir, key)
    if done is not None:  # possibly made for another role (a frontier point reused as a 1x baseline)
        return {**done, "variant": v.name, "role": v.role}
    started = run_dir / "run_key.json"  # what the checkpoints in run_dir were trained for
    resumable = started.is_file() and comparable(json.loads(started.read_text())) == comparable(key)
    if run_dir.is_dir() and not (resumable and text.latest_complete_checkpoint(run_dir)):
        shutil.rmtree(run_dir)  # nothing to resume from, or made with other settings: start clean
    run_dir.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(key))
    models = [text.load_teacher(teachers[t]["path"], ctx.preset.task) for t in v.teachers]
    tr = text.train_one(ctx.preset, corpus, run_dir, job.steps, job.seed, models, v, progress=False,
                        save_every=ctx.save_every, report_to=ctx.report_to)
    run = {"variant": v.name, "role": v.role, "seed": job.seed, "steps": job.steps, "run_dir": str(run_dir),
           "teachers": list(v.teachers), "kd_stop_ratio": v.kd_stop_ratio, "selection": v.selection,
           "teacher_forwards": tr.teacher_forwards,  # whole run, across resumes (checkpointed)
           "log_history": tr.state.log_history}
    for ckpt in run_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)  # finished: the result and trainer_state.json are what count
    tmp = run_dir / (RESULT + ".partial")
    tmp.write_text(json.dumps({"key": key, "run": run}, default=str))
    tmp.replace(run_dir / RESULT)
    return run


def log_plan(jobs: list[Job], calibration: dict, workers: int, teacher_steps: int) -> float:
    """Log what will be trained (finished runs excluded) and the time it should take here; returns seconds."""
    from .calibrate import estimate_seconds

    runs = [{"teachers": j.variant.teachers, "selection": j.variant.selection, "kd_stop_ratio": j.variant.kd_stop_ratio,
             "steps": j.steps} for j in jobs if j.variant is not None and not (Path(j.run_dir) / RESULT).is_file()]
    names = sorted({j.name for j in jobs if j.variant is not None})
    seeds = sorted({j.seed for j in jobs if j.variant is not None})
    sec = estimate_seconds(runs, teacher_steps, calibration, workers)
    logger.info("plan: %d variants (%s) x seeds %s; to train now: %d runs + %d teacher steps, %d worker(s); "
                "estimated %.0f min of training here (%.3f s per baseline step measured just now; evaluations "
                "not included)", len(names), ", ".join(names), seeds, len(runs), teacher_steps, workers, sec / 60,
                calibration["seconds_per_step"]["base"])
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


def execute(jobs: list[Job], ctx: Context, workers: int = 1, threads: int = 1) -> tuple[dict, list[dict]]:
    """Run teachers, then the jobs that need them, ``workers`` at a time; returns (teachers, runs in job order)."""
    teachers: dict[str, dict] = {}
    results: dict[int, dict] = {}
    todo = list(enumerate(jobs))
    bar = tqdm(total=len(jobs), desc="trainings")

    def ready(job: Job) -> bool:
        return all(t in teachers for t in job.needs)

    def done(i: int, job: Job, res: dict) -> None:
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
