"""``hf-kd reproduce --task vision``: the same protocol as the text preset, with the ResNet loop on digits.

    hf-kd reproduce --task vision          # resnet18 teachers and students on scikit-learn digits, CPU

Teachers (good: 3x the students' budget, second: 2x, poor: a quarter) are trained once and cached; the
students share seed, data order and budget: baseline, KD throughout, KD stopped at 25%/50%, KD from the
poor teacher, 3-teacher ensemble with ``mean`` and ``sample``, and baselines at other budgets for the frontier.
Quality = top-1 on the fixed validation split (higher is better); cost = cumulative GPU-hours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .report import write_report
from .text import Variant, cached_teacher, select_variants, teacher_steps


@dataclass(frozen=True)
class VisionPreset:
    model: str = "resnet18"
    batch_size: int = 32
    steps: int = 90  # 2 epochs of the 1,437 training digits
    eval_every: int = 15
    learning_rate: float = 0.05
    warmup_steps: int = 10
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    good_teacher_steps: int = 270
    second_teacher_steps: int = 180
    poor_teacher_steps: int = 25
    frontier: tuple[float, ...] = (0.5, 0.75, 1.5)


def _train(p: VisionPreset, out: Path, steps: int, seed: int, teacher_dirs=(), v: Variant | None = None) -> dict:
    """One run in this process; returns its metrics rows and the measured number of teacher forwards."""
    from accelerate.state import AcceleratorState, GradientState

    from ..vision.data import VisionDataArguments
    from ..vision.loop import VisionRun
    from ..vision.setup import VisionModelArguments, VisionTrainingArguments

    args = VisionTrainingArguments(
        output_dir=str(out), overwrite_output_dir=True, seed=seed, max_steps=steps,
        per_device_train_batch_size=p.batch_size, learning_rate=p.learning_rate, warmup_steps=p.warmup_steps,
        eval_steps=p.eval_every, kd_alpha=p.kd_alpha, kd_temperature=p.kd_temperature,
        kd_stop_ratio=v.kd_stop_ratio if v else None, kd_teacher_selection=v.selection if v else "mean")
    run = VisionRun(VisionModelArguments(model=p.model, teacher_checkpoint=list(teacher_dirs)),
                    VisionDataArguments(), args)
    calls = [0]
    for t in run.kd_step.teachers:
        t.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        run.train()
    finally:  # many runs in one process: each starts from a fresh accelerate state
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"log_history": rows, "teacher_forwards": calls[0]}


def ensure_vision_teacher(name: str, p: VisionPreset) -> tuple[Path, dict]:
    """Train a digits teacher once and cache its run folder (usable as ``--teacher_checkpoint``)."""
    steps, seed = teacher_steps(p)[name]
    shape = {k: getattr(p, k) for k in ("model", "batch_size", "learning_rate", "warmup_steps")}

    def train(folder: Path) -> dict:
        last = _train(p, folder, steps, seed)["log_history"][-1]
        return {"steps": steps, "seed": seed, "gpu_hours": last["gpu_hours"], "final_quality": last["top1"]}

    return cached_teacher("vision_teachers", name, [shape, steps, seed, "digits"], train)


def run_vision(output_dir: str, seeds: int = 1, preset: VisionPreset | None = None,
               only: list[str] | None = None, full: bool = True) -> dict:
    """The whole vision protocol; returns the results dict (also written to ``output_dir``)."""
    p = preset or VisionPreset()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vs = select_variants(p, only, full)
    needed = sorted({t for v in vs for t in v.teachers}, key=list(teacher_steps(p)).index)
    teachers = {n: ensure_vision_teacher(n, p) for n in tqdm(needed, desc="teachers")}
    runs = []
    for seed, v in tqdm([(s, v) for s in range(seeds) for v in vs], desc="runs"):
        steps = int(round(p.steps * v.budget))
        run_dir = out / "runs" / f"{v.name}-seed{seed}"
        res = _train(p, run_dir, steps, seed, [str(teachers[t][0]) for t in v.teachers], v)
        runs.append({"variant": v.name, "role": v.role, "seed": seed, "steps": steps, "run_dir": str(run_dir),
                     "teachers": list(v.teachers), "kd_stop_ratio": v.kd_stop_ratio, "selection": v.selection, **res})
    results = {"preset": asdict(p), "corpus": "scikit-learn digits (vision)", "teachers": {n: m for n, (_, m) in
               teachers.items()}, "runs": runs}
    return write_report(results, out, task="vision")
