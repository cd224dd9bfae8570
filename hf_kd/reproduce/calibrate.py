"""A cost axis that machine load cannot bend: per-step costs of each step kind, measured interleaved in one process.

On a shared machine the wall-clock cost of runs made minutes apart differs with the load. Here every step kind
the protocol uses -- a baseline step (``base``), a KD step with ``k`` teachers (``kd<k>``), a step after the KD
cutoff (``post``) -- is timed in the same process, in rotating order over several rounds, so load changes hit
all kinds alike; the median per kind is kept. A run's calibrated cost after ``s`` steps is then the sum of its
steps' kind costs, in units of one baseline step, so every run is charged from the same measurement.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..core.schedule import resolve_kd_stop_step

logger = logging.getLogger(__name__)


def step_kind(run: dict) -> str:
    """The kind of a run's KD steps: ``kd<k>`` with ``k`` teachers run per step (1 when sampling)."""
    k = len(run["teachers"]) if run.get("selection", "mean") == "mean" else 1
    return f"kd{k}"


def kinds_for(runs: list[dict]) -> list[str]:
    kinds = {"base"}
    for r in runs:
        if r["teachers"]:
            kinds.add(step_kind(r))
            if r.get("kd_stop_ratio") is not None:
                kinds.add("post")
    return sorted(kinds)


def calibrated_cost(run: dict, step: float, calibration: dict | None) -> float:
    """Cost of ``run``'s first ``step`` steps in baseline-step units (``calibration['relative']``)."""
    rel = calibration["relative"]
    if not run["teachers"]:
        return step * rel["base"]
    stop = resolve_kd_stop_step(run["steps"], run.get("kd_stop_ratio"))
    kd, post = min(step, stop), max(0.0, step - stop)
    return kd * rel[step_kind(run)] + post * rel.get("post", rel["base"])


def _batches(corpus, collator, batch_size: int, n: int) -> list[dict]:
    import itertools

    rows = list(itertools.islice(iter(corpus.train), batch_size * n))  # works for a stream too
    rows = [rows[i % len(rows)] for i in range(batch_size * n)]
    keep = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
    return [collator([{k: r[k] for k in keep if k in r} for r in rows[i * batch_size:(i + 1) * batch_size]])
            for i in range(n)]


def _stepper(p, corpus, student, teachers, kind: str, folder: str):
    """A closure doing one optimizer step of ``kind`` with a ``DistillationTrainer``'s own ``compute_loss``."""
    from .text import Variant, trainer_for, training_args

    k = int(kind[2:]) if kind.startswith("kd") else (1 if kind == "post" else 0)
    v = Variant(kind, tuple(f"t{i}" for i in range(k)), kd_stop_ratio=0.5 if kind == "post" else None)
    model = copy.deepcopy(student).train()
    # A post-cutoff step releases its teachers (moves them off the accelerator): give it copies of its own.
    ts = [copy.deepcopy(teachers[0])] if kind == "post" else teachers[:k]
    trainer = trainer_for(p, corpus, model, ts, training_args(p, Path(folder) / kind, 1000, 0, v, False))
    trainer.state.max_steps = 1000
    trainer.state.global_step = 999 if kind == "post" else 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
        # a causal LM's trainer counts its next-token positions itself (None); the MLM one gets the masked count
        n = None if p.task == "clm" else (batch["labels"] != -100).sum()
        with trainer.autocast_smart_context_manager():  # bf16 where training uses it
            loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure_step_costs(p, corpus, kinds: list[str], rounds: int = 5, steps_per_round: int = 3) -> dict:
    """Seconds per optimizer step of each kind (median over ``rounds``, one warm-up round discarded)."""
    import transformers

    from .text import collator_for, new_model

    transformers.set_seed(0)
    student = new_model(p, corpus)  # the preset's task: MLM (BERT) or causal-LM (GPT-2) steps
    n_teachers = max([int(k[2:]) for k in kinds if k.startswith("kd")] + [1 if "post" in kinds else 0])
    # Teachers of the preset's shape with random weights: a forward costs the same whatever the weights are.
    teachers = [new_model(p, corpus) for _ in range(n_teachers)]
    batches = _batches(corpus, collator_for(p, corpus.tokenizer), p.batch_size, 4)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        steppers = {k: _stepper(p, corpus, student, teachers, k, tmp) for k in kinds}
        for r in range(rounds + 1):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotate, so no kind always goes first
            for k in order:
                _sync()
                t0 = time.perf_counter()
                for i in range(steps_per_round):
                    steppers[k](batches[i % len(batches)])
                _sync()
                if r:  # round 0 warms up allocators and caches
                    times[k].append((time.perf_counter() - t0) / steps_per_round)
    sec = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_per_step": sec, "relative": {k: v / sec["base"] for k, v in sec.items()}, "rounds": rounds,
            "steps_per_round": steps_per_round, "threads": torch.get_num_threads(), "kinds": kinds}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def estimate_seconds(runs: list[dict], teacher_steps: int, calibration: dict, workers: int = 1) -> float:
    """Training time the plan needs on this machine: calibrated steps x measured seconds per baseline step.

    Evaluations, checkpoints and process start-up are not included (a few % of the tiny preset's runs).
    """
    base = calibration["seconds_per_step"]["base"]
    total = sum(calibrated_cost(r, r["steps"], calibration) for r in runs) + teacher_steps
    return total * base / max(1, workers)


def load_or_measure(path: Path, key: dict, measure) -> dict:
    """The calibration stored at ``path`` for ``key`` (reused on reruns, so resumed runs share it), else measure."""
    key = json.loads(json.dumps(key, default=str))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved
    cal = {"key": key, **measure()}
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(cal, indent=2))
    tmp.replace(path)
    logger.info("calibrated step costs (baseline step = 1): %s", cal["relative"])
    return cal
