"""The protocol every task runs, and the interface a task implements to run it (:class:`TaskBackend`).

Protocol (Blakeney et al. 2022, Sec. 4): teachers are trained once and cached (the paper's "recycle": their cost is
sunk and shown separately). Students share seed, data order, masking and step budget: no-KD baseline; KD
throughout; KD stopped at 25% and 50%; (``--full``:) KD from a poor teacher and a 3-teacher ensemble with ``mean``
and with ``sample``. Baselines at other budgets, each with its own full LR schedule, give the budget frontier.

Nothing here knows a task: the text (MLM, CLM) and vision back ends implement :class:`TaskBackend`, and
``jobs``, ``calibrate``, ``report``, ``run`` and ``study`` talk to them only through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import UserError
from ..core.schedule import resolve_kd_stop_step

logger = logging.getLogger(__name__)

# The one task vocabulary: ``--task``, the presets, the trainer's ``kd_task`` and results.json's ``task``.
TASKS = ("mlm", "clm", "vision")


@dataclass(frozen=True)
class Variant:
    name: str
    teachers: tuple[str, ...] = ()
    kd_stop_ratio: float | None = None
    selection: str = "mean"
    budget: float = 1.0
    role: str = "student"  # "student" | "frontier"
    outputs: str = "live"  # teacher outputs: "live" (a forward per KD step) or "cached" (read from a cache)


# What `hf-kd reproduce` runs by default (3 seeds of each fit ~20 min on 2 CPU cores); `--full` runs all.
DEFAULT_VARIANTS = ("baseline", "kd_full", "kd_stop25", "kd_stop50", "baseline_0.75x", "baseline_1.5x", "baseline_2x")


def variants(frontier: tuple[float, ...], full: bool = True) -> list[Variant]:
    """Every variant of the protocol (``full``) or the default subset :data:`DEFAULT_VARIANTS`."""
    ens = ("good", "second", "poor")
    out = [Variant("baseline"), Variant("kd_full", ("good",)), Variant("kd_stop25", ("good",), 0.25),
           Variant("kd_stop50", ("good",), 0.5), Variant("kd_poor_teacher", ("poor",)),
           Variant("ensemble_mean", ens, selection="mean"), Variant("ensemble_sample", ens, selection="sample")]
    out += [Variant(f"baseline_{b:g}x", budget=b, role="frontier") for b in frontier]
    return out if full else [v for v in out if v.name in DEFAULT_VARIANTS]


TEACHER_OUTPUTS = ("cached", "live")
LIVE_TWIN = "kd_full_live"  # with cached outputs: KD throughout with a live teacher, the cached runs' quality check


def with_outputs(vs: list[Variant], teacher_outputs: str) -> list[Variant]:
    """``vs`` with their KD variants reading ``teacher_outputs``; with ``cached``, plus :data:`LIVE_TWIN` when
    ``kd_full`` runs (the same run with a live teacher: the report's cached-vs-live quality at equal steps)."""
    if teacher_outputs not in TEACHER_OUTPUTS:
        raise UserError(f"--teacher_outputs {teacher_outputs!r} is invalid: expected one of {', '.join(TEACHER_OUTPUTS)}")
    if teacher_outputs == "live":
        return vs
    out = [replace(v, outputs="cached") if v.teachers else v for v in vs]
    if any(v.name == "kd_full" for v in vs):
        out.insert(next(i for i, v in enumerate(out) if v.name == "kd_full") + 1, Variant(LIVE_TWIN, ("good",)))
    return out


def select_variants(frontier: tuple[float, ...], only: list[str] | None, full: bool,
                    teacher_outputs: str = "live") -> list[Variant]:
    """The variants to run: ``only`` (plus the baselines) from the whole grid, else the default or full set."""
    everything = variants(frontier, full=True)
    if only:
        names = [v.name for v in everything]
        bad = [n for n in only if n not in names]
        if bad:
            raise UserError(f"--only {' '.join(bad)}: unknown variant(s); expected some of {', '.join(names)}")
        # the baselines (1x and the frontier) always run: every speed-up is measured against them
        chosen = [v for v in everything if v.name in only or v.name == "baseline" or v.role == "frontier"]
    else:
        chosen = variants(frontier, full=full)
    return with_outputs(chosen, teacher_outputs)


def teacher_steps(p: Any) -> dict[str, tuple[int, int]]:
    """Teacher name -> (steps, seed): a good one trained 3x the students' budget, a second, a poor one."""
    return {"good": (p.good_teacher_steps, 101), "second": (p.second_teacher_steps, 102),
            "poor": (p.poor_teacher_steps, 103)}


@dataclass
class Job:
    """One training: a teacher (``variant is None``) or a student/frontier run of ``variant`` with ``seed``."""

    name: str
    seed: int = 0
    steps: int = 0
    variant: Variant | None = None
    run_dir: str = ""
    needs: tuple[str, ...] = field(default_factory=tuple)  # teachers (and a teacher-output cache) needed first
    cache: CacheSpec | None = None  # a cache to produce (``variant is None``), or the one a cached run reads


@dataclass(frozen=True)
class CacheSpec:
    """One teacher-output cache of the protocol: ``teachers`` (``selection``) over seed ``seed``'s training stream,
    steps ``0..steps-1`` (the latest KD stop among the runs that read it), in ``folder``."""

    name: str
    teachers: tuple[str, ...]
    selection: str
    seed: int
    steps: int
    max_steps: int
    folder: str


@dataclass
class TeacherRecord:
    """A teacher ready for students: where it is, and its meta data (``teacher.json``, the report's lines)."""

    path: str
    meta: dict


@dataclass
class RunOutcome:
    """What a back end returns for one finished training."""

    teacher_forwards: int  # whole run, across resumes
    log_history: list[dict]


@dataclass
class RunRecord:
    """One finished student or frontier run, as results.json keeps it (``to_dict``) and the report reads it."""

    variant: str
    role: str
    seed: int
    steps: int
    run_dir: str
    teachers: list[str]
    kd_stop_ratio: float | None
    selection: str
    teacher_forwards: int
    log_history: list[dict]
    teacher_outputs: str = "live"  # "cached": KD targets read from the teacher-output cache ``cache``
    cache: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Calibration:
    """Per-step costs of each step kind (see :mod:`hf_kd.reproduce.calibrate`); ``key`` says what was measured."""

    relative: dict[str, float]  # kind -> seconds per step / seconds per baseline step
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    steps_per_round: int = 0
    threads: int = 0
    kinds: list[str] = field(default_factory=list)
    teacher_parameters: dict[str, int] = field(default_factory=dict)  # kind -> parameters of the teachers timed
    seconds_per_evaluation: float = 0.0  # one evaluation of the validation set (0: not measured)
    key: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration | None:
        if d is None:
            return None
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class TaskBackend(Protocol):
    """What a task gives the protocol. Implemented by :mod:`.text` (``mlm``, ``clm``) and :mod:`.vision`."""

    task: str  # one of TASKS: the report's metric and results.json's ``task``
    preset: Any  # the task's preset (frontier, steps, teacher budgets, eval_every, ...)
    data_name: str  # the corpus / data set, as the report's title names it
    key: dict  # preset + data fingerprint: part of every run key and of the calibration's key

    def for_workers(self, folder: Path) -> TaskBackend:
        """A copy cheap to send to spawned worker processes (data saved under ``folder`` once)."""

    def teacher_steps_to_train(self, name: str) -> int:
        """Steps teacher ``name`` still needs (0: cached or recycled)."""

    def peek_teacher(self, name: str) -> TeacherRecord | None:
        """Teacher ``name`` if it is ready without any work (cached), else ``None``."""

    def ensure_teacher(self, name: str, progress: bool) -> TeacherRecord:
        """Train teacher ``name`` once (cached by what shapes it and the data), or return the cached one."""

    def train(self, job: Job, teachers: list[str], save_every: int | None, progress: bool) -> RunOutcome:
        """Train ``job`` from ``teachers`` (paths) into ``job.run_dir``, resuming a complete checkpoint there; a
        cached run (``job.cache``) reads its targets from the cache instead of running the teachers."""

    def ensure_teacher_outputs(self, spec: CacheSpec, teachers: list[TeacherRecord], progress: bool) -> TeacherRecord:
        """Produce the cache ``spec`` once (resumable; kept for reruns), or return the finished one; its record's
        meta holds what the report shows (bytes, positions, producing seconds)."""

    def has_checkpoint(self, run_dir: Path) -> bool:
        """Whether ``run_dir`` holds a complete checkpoint to resume from."""

    def measure_step_costs(self, kinds: list[str], rounds: int = 5, steps_per_round: int = 3,
                           workers: int = 1) -> Calibration:
        """Seconds per optimizer step of each kind, with teachers of the real teachers' size, while ``workers - 1``
        other trainings run beside it (and, where the back end measures it, seconds per evaluation)."""

    def teacher_eval_every(self, steps: int) -> int:
        """The evaluation interval of a teacher trained for ``steps`` (the plan's time estimate counts them)."""

    def results_extra(self) -> dict:
        """What results.json keeps about the data (``corpus_stats``, ``regime``)."""


def cache_folder(root: Path, kind: str, name: str, key_parts: list) -> Path:
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return root / kind / f"{name}-{digest}"


def peek_cached_teacher(folder: Path) -> TeacherRecord | None:
    if (folder / "teacher.json").is_file():
        return TeacherRecord(str(folder), json.loads((folder / "teacher.json").read_text()))
    return None


def cached_teacher(folder: Path, name: str, train) -> TeacherRecord:
    """``train(folder) -> meta`` once per folder (the paper's "recycle"); later calls reuse the cached folder.

    The folder is built under a ``.partial`` name and renamed when complete, so a killed run never leaves a
    half-trained teacher in the cache.
    """
    cached = peek_cached_teacher(folder)
    if cached is not None:
        logger.info("reusing cached teacher %s from %s", name, folder)
        return cached
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"name": name, **train(tmp)}
    (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return TeacherRecord(str(folder), meta)


def run_dir_for(v: Variant, steps: int, seed: int, out: Path, baseline_dir: Path | None = None) -> Path:
    """``out/runs/<variant>-seed<i>``; runs without teachers go to ``baseline_dir`` (when given) by step count,
    where protocols with other budgets find and reuse them (the regime study's cells share one)."""
    if baseline_dir is not None and not v.teachers:
        return baseline_dir / f"baseline-{steps}steps-seed{seed}"
    return out / "runs" / f"{v.name}-seed{seed}"


def kd_stop_of(v: Variant, steps: int) -> int:
    return min(resolve_kd_stop_step(steps, v.kd_stop_ratio), steps)


def plan_caches(runs: list[Job], out: Path) -> list[Job]:
    """One cache-producing job per (teachers, selection, seed) that cached runs read, covering their latest KD
    stop; each reading run gets the cache in ``job.cache`` and needs its job."""
    groups: dict[tuple, list[Job]] = {}
    for j in runs:
        if j.variant.outputs == "cached" and j.variant.teachers:
            groups.setdefault((j.variant.teachers, j.variant.selection, j.seed), []).append(j)
    jobs = []
    for (teachers, selection, seed), readers in groups.items():
        steps = max(kd_stop_of(j.variant, j.steps) for j in readers)
        name = f"outputs-{'+'.join(teachers)}-{selection}-seed{seed}"
        spec = CacheSpec(name, teachers, selection, seed, steps, max(j.steps for j in readers),
                         str(out / "teacher_outputs" / name))
        jobs.append(Job(name, seed, steps, None, spec.folder, teachers, spec))
        for j in readers:
            j.cache, j.needs = spec, (*j.needs, name)
    return jobs


def plan_jobs(p: Any, vs: list[Variant], seeds: int, out: Path, baseline_dir: Path | None = None) -> list[Job]:
    """Teachers first, then caches, then the longest trainings first (so parallel workers finish together)."""
    order = list(teacher_steps(p))
    needed = sorted({t for v in vs for t in v.teachers}, key=order.index)
    jobs = [Job(n, steps=teacher_steps(p)[n][0]) for n in needed]
    steps = {v.name: int(round(p.steps * v.budget)) for v in vs}
    runs = [Job(v.name, seed, steps[v.name], v, str(run_dir_for(v, steps[v.name], seed, out, baseline_dir)),
                tuple(v.teachers)) for seed in range(seeds) for v in vs]
    same = [(a.name, b.name) for i, a in enumerate(runs) for b in runs[i + 1:] if a.run_dir == b.run_dir]
    if same:  # two parallel trainings into one folder would corrupt it
        raise UserError(f"variants {same[0][0]} and {same[0][1]} are both a {steps[same[0][0]]}-step baseline: "
                        "expected frontier budgets that round to distinct step counts")
    caches = plan_caches(runs, out)
    return jobs + caches + sorted(runs, key=lambda j: (bool(j.needs), -j.steps))
