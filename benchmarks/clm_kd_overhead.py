"""Causal-LM KD step cost: ours vs a plain step, a hand-written KD Trainer and TRL's GKDTrainer, in one process.

    python benchmarks/clm_kd_overhead.py                       # tiny GPT-2 (2L/128), vocab 8192, batch 16 x 128, CPU
    python benchmarks/clm_kd_overhead.py --vocab 50257 --reps 5 --steps 2
    PYTHONPATH=/tmp/trl_site python benchmarks/clm_kd_overhead.py   # + TRL (pip install --no-deps --target /tmp/trl_site trl)
    PYTHONPATH=. /tmp/trlvenv/bin/python benchmarks/clm_kd_overhead.py   # + TRL in a scratch venv (benchmarks/RESULTS.md)

Variants, timed interleaved (round-robin, median of ``--reps`` rounds) so machine noise hits all alike; each is
``compute_loss`` + backward + AdamW step of its own ``Trainer`` on the same batch, student and teacher the same size:

* ``plain``      ``transformers.Trainer``, the model's own causal-LM loss (no teacher)
* ``ours``       ``DistillationTrainer``, CE + forward KL (alpha 0.5, T 1), chunked fused head+loss (the default)
* ``ours_base``  ``DistillationTrainer`` without a teacher: the no-KD baseline of the same loss path (chunked CE)
* ``cached``     ``DistillationTrainer`` reading stored top-64 float16 targets (``--kd_teacher_cache``): no teacher
                 in memory; same loss path (chunked), rest-bucket sparse KD
* ``ours_full``  the same with ``clm_chunk_size=0`` (full ``[positions, vocab]`` logits; for comparison)
* ``hand``       a minimal ``Trainer`` subclass: model loss + ``F.kl_div`` of full shifted logits (what users write)
* ``trl``        TRL ``GKDTrainer(lmbda=0, beta=0)`` (supervised forward KL, KD term only), when TRL imports
* ``trl_distill`` TRL's stable ``trl.trainer.DistillationTrainer(beta=0)`` (forward KL, KD term only, its chunked
                 loss that projects both heads a tile of positions at a time), when TRL has it. It is an on-policy
                 trainer (it generates completions in ``_prepare_inputs``); the benchmark calls its ``compute_loss``
                 directly on the fixed batch split as a 1-token prompt + 127-token completion, so it distils at
                 the same 127 next-token positions per sequence as the others (no generation timed)

The FLOP-model ideal is ``1 + F(teacher forward) / F(student forward + backward)`` (full heads,
``torch.utils.flop_counter``). Peak memory, per variant in a fresh subprocess (the same imports in each, TRL's
included when it is there): the trainer is built, the kernel's RSS high-water mark is reset
(``/proc/self/clear_refs`` = 5, Linux), 3 steps run, and ``VmHWM`` is read: the peak resident memory of a training
step with models, optimizer state and everything the step allocates; the table also gives its excess over ``plain``.
(``tracemalloc`` does not see torch's allocations, and ``ru_maxrss`` would be the import-time peak.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_kd import DistillationTrainer, DistillationTrainingArguments

PRODUCTION: dict = {}  # the cached variant's production measurements (teacher positions/s, bytes per position)
VARIANTS = ("plain", "ours_base", "ours", "cached", "ours_full", "hand", "trl", "trl_distill")


def make_model(a: argparse.Namespace, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=a.vocab, n_embd=a.hidden, n_layer=a.layers, n_head=2,
                                      n_positions=max(1024, a.seq)))


def make_batch(a: argparse.Namespace) -> dict:
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class HandKDTrainer(Trainer):
    """The minimal KD Trainer subclass a user writes: full logits of both models, shifted, ``F.kl_div``."""

    def __init__(self, teacher, **kw):
        super().__init__(**kw)
        self.teacher = teacher.eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        with torch.no_grad():
            t = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        mask = inputs["labels"][:, 1:] != -100
        kl = F.kl_div(F.log_softmax(out.logits[:, :-1][mask], -1), F.log_softmax(t[:, :-1][mask], -1),
                      log_target=True, reduction="batchmean")
        return 0.5 * out.loss + 0.5 * kl


def _common(outdir: str) -> dict:
    return dict(output_dir=outdir, report_to="none", use_cpu=True, disable_tqdm=True, max_steps=10**6,
                save_strategy="no")


def _word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="w0")),
                                   unk_token="w0", pad_token="w1", eos_token="w2")


def make_trainer(variant: str, a: argparse.Namespace) -> Trainer:
    outdir = tempfile.mkdtemp()
    student = make_model(a, 0)
    if variant == "plain":
        return Trainer(model=student, args=TrainingArguments(**_common(outdir)))
    if variant == "ours_base":
        return DistillationTrainer(model=student, args=DistillationTrainingArguments(**_common(outdir)))
    if variant in ("ours", "ours_full"):
        args = DistillationTrainingArguments(**_common(outdir), kd_alpha=0.5, kd_temperature=1.0,
                                             clm_chunk_size=0 if variant == "ours_full" else None)
        return DistillationTrainer(model=student, teacher_model=make_model(a, 1), args=args)
    if variant == "cached":
        from cache_bench import build_cache, cached_trainer

        args = DistillationTrainingArguments(**_common(outdir), kd_alpha=0.5, kd_temperature=1.0)
        info = build_cache(f"{outdir}/cache", "clm", make_model(a, 1), make_batch(a), args)[1]
        PRODUCTION.update(info)
        args = DistillationTrainingArguments(**_common(outdir), kd_alpha=0.5, kd_temperature=1.0,
                                             kd_teacher_cache=f"{outdir}/cache")
        return cached_trainer(student, args)
    if variant == "hand":
        return HandKDTrainer(make_model(a, 1), model=student, args=TrainingArguments(**_common(outdir)))
    if variant == "trl_distill":
        return make_trl_distill(a, student, outdir)
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    args = GKDConfig(**_common(outdir), lmbda=0.0, beta=0.0, temperature=1.0, max_length=a.seq)
    data = Dataset.from_dict({"messages": [[{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}]]})
    return GKDTrainer(model=student, teacher_model=make_model(a, 1), args=args, train_dataset=data,
                      processing_class=_word_tokenizer(a.vocab))


def make_trl_distill(a: argparse.Namespace, student: GPT2LMHeadModel, outdir: str) -> Trainer:
    from datasets import Dataset
    from trl.trainer import DistillationConfig
    from trl.trainer import DistillationTrainer as TRLDistillationTrainer

    # gradient_checkpointing defaults to True in TRL's config; off here, as for every other variant.
    args = DistillationConfig(**_common(outdir), beta=0.0, temperature=1.0, gradient_checkpointing=False,
                              optim="adamw_torch", max_completion_length=a.seq)
    data = Dataset.from_dict({"prompt": ["w3"]})
    return TRLDistillationTrainer(model=student, teacher_model=make_model(a, 1), args=args, train_dataset=data,
                                  processing_class=_word_tokenizer(a.vocab))


def trl_inputs(batch: dict) -> dict:
    """The batch as TRL's DistillationTrainer's ``compute_loss`` takes it: token 0 as the prompt, the rest as the
    completion, so its loss covers the same next-token positions as the other variants."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return {"prompt_ids": ids[:, :1], "prompt_mask": mask[:, :1], "completion_ids": ids[:, 1:],
            "completion_mask": mask[:, 1:]}


def available(variant: str) -> bool:
    try:
        if variant == "trl":
            import trl.experimental.gkd  # noqa: F401
        elif variant == "trl_distill":
            from trl.trainer import DistillationTrainer as _  # noqa: F401
    except ImportError:
        return False
    return True


def prepare(trainer: Trainer) -> Trainer:
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.state.max_steps = 10**6
    return trainer


def one_step(trainer: Trainer, batch: dict) -> None:
    from cache_bench import rewind

    rewind(trainer)
    model = trainer.model
    model.train()
    n = (batch["labels"][:, 1:] != -100).sum()
    if type(trainer).__module__.startswith("trl.trainer.distillation"):
        batch = trl_inputs(batch)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def flop_ideal(a: argparse.Namespace) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: v for k, v in make_batch(a).items() if k != "labels"}
    with FlopCounterMode(display=False) as fc:
        make_model(a, 0)(**inputs).logits.sum().backward()
    f_student = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        make_model(a, 1)(**inputs)
    return 1.0 + fc.get_total_flops() / f_student


def time_all(a: argparse.Namespace, variants: list[str]) -> dict[str, list[float]]:
    trainers = {v: prepare(make_trainer(v, a)) for v in variants}
    batch = make_batch(a)
    for t in trainers.values():
        for _ in range(a.warmup):
            one_step(t, batch)
    times = {v: [] for v in variants}
    for _ in range(a.reps):
        for v, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                one_step(t, batch)
            times[v].append((time.perf_counter() - t0) / a.steps)
    return times


def peak_rss_mib(variant: str, a: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--memory_child", variant, "--vocab", str(a.vocab), "--seq", str(a.seq),
           "--batch", str(a.batch), "--layers", str(a.layers), "--hidden", str(a.hidden)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_mib(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--reps", type=int, default=7, help="interleaved rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    if a.memory_child:
        available("trl"), available("trl_distill")  # same imports in every child
        t, batch = prepare(make_trainer(a.memory_child, a)), make_batch(a)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark to the current RSS
        for _ in range(3):
            one_step(t, batch)
        print(_status_mib("VmHWM"))
        return
    variants = [v for v in a.variants if available(v)]
    ideal = flop_ideal(a)
    times = time_all(a, variants)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    mem = {v: peak_rss_mib(v, a) for v in variants}
    res = {"config": vars(a), "seconds_per_step_median": med, "seconds_per_step_all": times, "flop_ideal": ideal,
           "ratio_to_plain": {v: med[v] / med["plain"] for v in variants},
           # each round's ratio to the plain block run just before it, then the median (robust to load drifts)
           "ratio_per_round_median": {v: statistics.median(t / p for t, p in zip(times[v], times["plain"]))
                                      for v in variants},
           "peak_rss_mib": mem,
           "rss_over_plain_mib": {v: mem[v] - mem["plain"] for v in variants},
           "missing": [v for v in a.variants if v not in variants], "cache_production": PRODUCTION}
    print(f"tiny GPT-2 {a.layers}L/{a.hidden}, vocab {a.vocab}, batch {a.batch} x {a.seq}, CPU, {a.threads} thread(s)")
    print(f"  {'variant':<10} {'ms/step':>9} {'x plain':>8} {'x plain/round':>14} {'peak RSS MiB':>13} {'+ over plain':>13}")
    for v in variants:
        print(f"  {v:<10} {1000 * med[v]:9.1f} {med[v] / med['plain']:8.2f} {res['ratio_per_round_median'][v]:14.2f} "
              f"{mem[v]:13.0f} {mem[v] - mem['plain']:+13.0f}")
    print(f"  FLOP-model ideal (same-size teacher): {ideal:.2f} x plain")
    if PRODUCTION:
        print(f"  cache production (teacher forward + top-64 + encode): {PRODUCTION['teacher_positions_per_second']:.0f}"
              f" KD positions/s; {PRODUCTION['bytes_per_kd_position']:.1f} bytes per KD position (float16)")
    if res["missing"]:
        print(f"  not run (not importable): {res['missing']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
