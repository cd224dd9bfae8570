"""Per-step cost of ResNet KD vs the no-KD baseline, side by side in one process, next to the FLOP-model ideal.

    python benchmarks/resnet_kd_overhead.py --threads 1                  # resnet18 <- resnet34, 64px, CPU
    python benchmarks/resnet_kd_overhead.py --student resnet50 --teacher resnet101 --image_size 224 \
        --batch 64 --device cuda --mixed_precision bf16                  # the ImageNet pair on a GPU

Every variant runs the library's own optimizer step (:class:`hf_kd.vision.loop.KDStep`, the one the training loop
uses) on the same fixed batch, timed interleaved (round-robin, median of ``--reps`` rounds) so machine noise hits
all alike:

* ``baseline``      student forward + backward + SGD step, no teacher
* ``kd``            the same + one teacher forward (no grad) + the KD term
* ``after_cutoff``  the KD step past its stop step (teacher present, never called)

FLOP-model ideal: ``1 + F_teacher_fwd / F_student_fwd+bwd`` (both counted by ``torch.utils.flop_counter``), which
is about ``1 + F_t / (3 F_s)`` with forward counts only (backward ~ 2 x forward).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

from hf_kd.vision.loop import KDStep
from hf_kd.vision.setup import build_model

VARIANTS = ("baseline", "kd", "after_cutoff")


def make_step(variant: str, acc: Accelerator, a: argparse.Namespace) -> KDStep:
    torch.manual_seed(0)
    model = build_model(a.student, a.num_classes, a.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model, opt = acc.prepare(model, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    teachers = []
    if variant != "baseline":
        torch.manual_seed(1)
        teacher = build_model(a.teacher, a.num_classes, a.channels_last).to(acc.device).eval().requires_grad_(False)
        teachers = [teacher]
    stop = 10**9 if variant == "kd" else 0  # after_cutoff: the stop step is already behind
    return KDStep(acc, model, opt, sched, teachers, alpha=0.5, temperature=4.0, stop_step=stop,
                  channels_last=a.channels_last)


def make_batch(a: argparse.Namespace, device) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=g)
    y = torch.randint(0, a.num_classes, (a.batch,), generator=g)
    return [(x.to(device), y.to(device))]


def flops(a: argparse.Namespace) -> dict[str, float]:
    """Student forward, student forward+backward and teacher forward FLOPs for one batch (CPU, float32)."""
    x = torch.randn(a.batch, 3, a.image_size, a.image_size)
    student, teacher = build_model(a.student, a.num_classes, False), build_model(a.teacher, a.num_classes, False)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        student(x)
    s_fwd = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        student(x).sum().backward()
    s_fwd_bwd = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        teacher(x)
    return {"student_fwd": s_fwd, "student_fwd_bwd": s_fwd_bwd, "teacher_fwd": fc.get_total_flops()}


def sync(acc: Accelerator) -> None:
    if acc.device.type == "cuda":
        torch.cuda.synchronize()


def time_all(a: argparse.Namespace, acc: Accelerator) -> dict[str, float]:
    steps = {v: make_step(v, acc, a) for v in VARIANTS}
    batch = make_batch(a, acc.device)
    for s in steps.values():  # warm-up (allocator, cuDNN autotuning, first-call overheads)
        for i in range(a.warmup):
            s(batch, i)
    times = {v: [] for v in VARIANTS}
    for _ in range(a.reps):
        for v, s in steps.items():
            sync(acc)
            t0 = time.perf_counter()
            for i in range(a.steps):
                s(batch, i)
            sync(acc)
            times[v].append((time.perf_counter() - t0) / a.steps)
    return {v: statistics.median(ts) for v, ts in times.items()}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet34")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--no_channels_last", dest="channels_last", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU); default: torch's")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--reps", type=int, default=7, help="interleaved rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def main() -> None:
    a = parse()
    if a.threads:
        torch.set_num_threads(a.threads)
    acc = Accelerator(cpu=a.device == "cpu", mixed_precision=a.mixed_precision)
    f = flops(a)
    ideal = 1.0 + f["teacher_fwd"] / f["student_fwd_bwd"]
    approx = 1.0 + f["teacher_fwd"] / (3 * f["student_fwd"])
    t = time_all(a, acc)
    res = {"config": vars(a), "seconds_per_step": t, "flops": f, "flop_ideal_kd_ratio": ideal,
           "flop_ideal_approx": approx, "kd_ratio": t["kd"] / t["baseline"],
           "kd_vs_ideal": t["kd"] / t["baseline"] / ideal, "after_cutoff_ratio": t["after_cutoff"] / t["baseline"],
           "images_per_second": {v: a.batch / s for v, s in t.items()}}
    print(f"{a.student} student <- {a.teacher} teacher, batch {a.batch} x {a.image_size}px, {a.num_classes} classes, "
          f"{acc.device}/{a.mixed_precision}, threads {torch.get_num_threads()}")
    for v in VARIANTS:
        print(f"  {v:<13} {1000 * t[v]:8.1f} ms/step  {res['images_per_second'][v]:8.1f} img/s")
    print(f"  GFLOPs/batch: student fwd {f['student_fwd'] / 1e9:.2f}, fwd+bwd {f['student_fwd_bwd'] / 1e9:.2f}, "
          f"teacher fwd {f['teacher_fwd'] / 1e9:.2f}")
    print(f"  FLOP-model ideal KD/baseline: {ideal:.3f}  (1 + F_t/(3 F_s) = {approx:.3f})")
    print(f"  KD/baseline measured: {res['kd_ratio']:.3f}  (= {res['kd_vs_ideal']:.3f} x ideal)")
    print(f"  after cutoff / baseline: {res['after_cutoff_ratio']:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
