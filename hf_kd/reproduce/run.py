"""One protocol run for any task: plan, calibrate, train (resumable, reusing finished runs), report.

``hf-kd reproduce`` (and each cell of the regime study) builds a task back end (:mod:`.text`, :mod:`.vision`) and
hands it to :func:`run_protocol`; nothing here knows which task it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .calibrate import kinds_for, load_or_measure
from .glue import GlueSettings, keep_final_models, run_glue
from .jobs import Context, execute, log_plan
from .protocol import TaskBackend, plan_jobs, select_variants
from .report import write_report

logger = logging.getLogger(__name__)


def run_protocol(backend: TaskBackend, output_dir: str, seeds: int = 1, only: list[str] | None = None,
                 full: bool = True, workers: int = 1, threads: int = 1, calibrate: bool = True,
                 baseline_dir: str | None = None, calibration_rounds: tuple[int, int] = (5, 3),
                 teacher_outputs: str = "live", glue: GlueSettings | None = None) -> dict:
    """Run the protocol (resumable: finished runs are reused); returns the results dict (also in ``output_dir``).

    ``baseline_dir``: a folder of runs without teachers shared with other protocols (see ``protocol.run_dir_for``).
    ``calibration_rounds``: (rounds, steps per round) of the step-cost calibration (``calibrate.calibration_size``).
    ``teacher_outputs``: ``"cached"``: KD students read teacher outputs produced once per (teachers, seed) into
    ``output_dir/teacher_outputs`` (and ``kd_full_live`` checks their quality against a live teacher);
    ``"live"``: every KD step runs its teachers (the paper's protocol).
    ``glue``: afterwards fine-tune every run's final model on GLUE (:mod:`.glue`) and add that to the report."""
    p = backend.preset
    vs = select_variants(p.frontier, only, full, teacher_outputs)
    out = Path(output_dir)
    ctx = Context(backend, save_every=2 * p.eval_every)
    jobs = plan_jobs(p, vs, seeds, out, Path(baseline_dir) if baseline_dir else None)
    if glue:
        keep_final_models(backend, jobs)
    calibration = None
    if calibrate:
        kinds = kinds_for(vs)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        # timed beside workers - 1 other trainings, as the runs will be (part of the key: it changes the seconds)
        key = {**backend.key, "kinds": kinds, "threads": threads, **({"workers": workers} if workers > 1 else {})}
        calibration = load_or_measure(out / "calibration.json", key,
                                      lambda: backend.measure_step_costs(kinds, *calibration_rounds, workers=workers))
        log_plan(jobs, ctx, calibration, workers, calibration_seconds=time.perf_counter() - t0)
    # created only now: the refusals above (a plan, a model setting found bad while calibrating) leave no folder
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        ctx = Context(backend.for_workers(out / "corpus"), ctx.save_every, progress=False)
    teachers, runs = execute(jobs, ctx, workers, threads)
    names = [v.name for v in vs]
    runs.sort(key=lambda r: (r.seed, names.index(r.variant)))
    caches = {j.name for j in jobs if j.variant is None and j.cache is not None}
    results = {"task": backend.task, "preset": asdict(p), "corpus": backend.data_name, **backend.results_extra(),
               "calibration": calibration.to_dict() if calibration else None, "teacher_outputs": teacher_outputs,
               "teachers": {n: t.meta for n, t in teachers.items() if n not in caches},
               **({"caches": {n: teachers[n].meta for n in sorted(caches)}} if caches else {}),
               "runs": [r.to_dict() for r in runs]}
    if glue:
        results["glue"] = run_glue(glue, runs, out, calibration)
    return write_report(results, out)
