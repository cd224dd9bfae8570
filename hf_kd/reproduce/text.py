"""``hf-kd reproduce``: the paper's protocol in miniature -- teachers, then students with one data order.

    hf-kd reproduce                                  # tiny preset, built-in corpus, 3 seeds, default variants
    hf-kd reproduce --full                           # every variant (poor teacher, ensembles, 0.5x frontier)
    hf-kd reproduce --corpus my_corpus.jsonl         # a local .txt/.jsonl instead of the built-in corpus
    hf-kd reproduce --preset bert-base-c4            # print the real-scale protocol (add --launch to run it)
    hf-kd reproduce --task clm                       # the same protocol for a tiny GPT-2 (next-token loss)

Protocol (Blakeney et al. 2022, Sec. 4): teachers are pretrained once with plain MLM and cached (the
paper's "recycle": their cost is sunk and shown separately). Students share seed, data order, masking and
step budget: no-KD baseline; KD throughout; KD stopped at 25% and 50%; (``--full``:) KD from a poor teacher
and a 3-teacher ensemble with ``mean`` and with ``sample``. Baselines at other budgets, each with its own full
LR schedule, give the budget frontier. Quality = held-out MLM loss on a validation set masked once; cost =
measured GPU-hours (teacher forwards included) and a calibrated cost (``calibrate``) that verdicts use.
Every run is repeated for each seed; finished runs are reused and half-finished ones resumed (``jobs``).
A preset with ``task="clm"`` runs the same protocol for causal LMs (GPT-2 students and teachers, next-token
labels, quality = held-out next-token loss); its model, collator and regime line are in ``clm``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers

from ..core.checkpointing import latest_complete_checkpoint
from ..core.errors import UserError
from ..text.config import DistillationTrainingArguments
from ..text.data import cache_root
from ..text.masking import PremaskedAwareCollator
from ..text.models import preset_config
from ..text.trainer import DistillationTrainer
from .clm import clm_collator, clm_model
from .corpus import Corpus, load_corpus, save_corpus, unigram_entropy

logger = logging.getLogger(__name__)


TASKS = ("mlm", "clm")


@dataclass(frozen=True)
class TinyPreset:
    """The tiny preset, fixed after tuning (README, "Reproducing the paper in miniature", has the evidence)."""

    model_preset: str = "tiny"
    vocab_size: int = 8192
    max_seq_length: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 2e-3  # 1e-3 left the tiny models near the unigram plateau; 3e-3 diverged to it
    warmup_ratio: float = 0.06
    eval_every: int = 40
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    good_teacher_steps: int = 1200
    second_teacher_steps: int = 800
    poor_teacher_steps: int = 100
    # 1.5x and 2x too: a KD run that ends better than the 1x baseline needs frontier points beyond it (the
    # frontier is interpolated, never extrapolated; a run beyond its best point reads "not reached")
    frontier: tuple[float, ...] = (0.5, 0.75, 1.5, 2.0)
    mlm_probability: float = 0.15
    kd_positions: str = "masked"  # "all": KD at every position (the regime study compares the two)
    # Corpus and teachers other than the built-in ones (the gpu-small preset: C4 streaming, a Hub teacher).
    dataset_name: str | None = None  # a Hub dataset instead of the built-in corpus / --corpus file
    dataset_config_name: str | None = None
    streaming: bool = False
    tokenizer_name: str | None = None  # a pretrained tokenizer instead of a WordPiece one trained on the corpus
    max_eval_samples: int | None = None  # validation sequences kept (a stream's first ones)
    recycled_teacher: str | None = None  # a pretrained MLM (path or Hub id) used as teacher "good", not trained
    bf16: bool = False  # on a GPU only
    task: str = "mlm"  # "clm": GPT-style students and teachers (``clm_preset_config``), next-token loss

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"preset task={self.task!r} is invalid: expected one of {', '.join(TASKS)}")


TEACHER_KEY_FIELDS = ("model_preset", "vocab_size", "max_seq_length", "batch_size", "learning_rate", "warmup_ratio",
                      "mlm_probability")


@dataclass
class Variant:
    name: str
    teachers: tuple[str, ...] = ()
    kd_stop_ratio: float | None = None
    selection: str = "mean"
    budget: float = 1.0
    role: str = "student"  # "student" | "frontier"


# What `hf-kd reproduce` runs by default (3 seeds of each fit ~20 min on 2 CPU cores); `--full` runs all.
DEFAULT_VARIANTS = ("baseline", "kd_full", "kd_stop25", "kd_stop50", "baseline_0.75x", "baseline_1.5x", "baseline_2x")


def variants(p, full: bool = True) -> list[Variant]:
    """Every variant of the protocol (``full``) or the default subset :data:`DEFAULT_VARIANTS`."""
    ens = ("good", "second", "poor")
    out = [Variant("baseline"), Variant("kd_full", ("good",)), Variant("kd_stop25", ("good",), 0.25),
           Variant("kd_stop50", ("good",), 0.5), Variant("kd_poor_teacher", ("poor",)),
           Variant("ensemble_mean", ens, selection="mean"), Variant("ensemble_sample", ens, selection="sample")]
    out += [Variant(f"baseline_{b:g}x", budget=b, role="frontier") for b in p.frontier]
    return out if full else [v for v in out if v.name in DEFAULT_VARIANTS]


def select_variants(p, only: list[str] | None, full: bool) -> list[Variant]:
    """The variants to run: ``only`` (plus the baselines) from the whole grid, else the default or full set."""
    everything = variants(p, full=True)
    if only:
        names = [v.name for v in everything]
        bad = [n for n in only if n not in names]
        if bad:
            raise UserError(f"--only {' '.join(bad)}: unknown variant(s); expected some of {', '.join(names)}")
        # the baselines (1x and the frontier) always run: every speed-up is measured against them
        return [v for v in everything if v.name in only or v.name == "baseline" or v.role == "frontier"]
    return variants(p, full=full)


def training_args(p: TinyPreset, out: Path, steps: int, seed: int, v: Variant | None = None,
                  report_progress: bool = True, save_every: int | None = None,
                  report_to: str = "none") -> DistillationTrainingArguments:
    return DistillationTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=64, learning_rate=p.learning_rate, warmup_steps=p.warmup_ratio,
        lr_scheduler_type="linear", weight_decay=0.01, seed=seed, data_seed=seed, eval_strategy="steps",
        eval_steps=p.eval_every, logging_steps=p.eval_every, report_to=report_to,
        # Checkpoints let an interrupted run resume (hf-kd reproduce reruns pick them up); one is kept.
        save_strategy="steps" if save_every else "no", save_steps=save_every or 500, save_total_limit=1,
        use_cpu=not torch.cuda.is_available(), bf16=getattr(p, "bf16", False) and torch.cuda.is_available(),
        disable_tqdm=not report_progress, dataloader_num_workers=0,
        kd_alpha=p.kd_alpha, kd_temperature=p.kd_temperature, kd_positions=p.kd_positions,
        kd_stop_ratio=v.kd_stop_ratio if v else None, kd_teacher_selection=v.selection if v else "mean",
        overwrite_output_dir=True)


def student_config(p: TinyPreset, corpus: Corpus) -> transformers.BertConfig:
    return preset_config(p.model_preset, vocab_size=len(corpus.tokenizer),
                         max_position_embeddings=max(512, p.max_seq_length), pad_token_id=corpus.tokenizer.pad_token_id)


def new_model(p: TinyPreset, corpus: Corpus) -> transformers.PreTrainedModel:
    """A fresh student (or teacher) of the preset's size and task, initialised from the current seed."""
    if p.task == "clm":
        return clm_model(p, corpus)
    return transformers.BertForMaskedLM(student_config(p, corpus))


def collator_for(p: TinyPreset, tokenizer):
    return clm_collator(tokenizer) if p.task == "clm" else PremaskedAwareCollator(tokenizer, p.mlm_probability)


def trainer_for(p: TinyPreset, corpus: Corpus, model, teachers, args: DistillationTrainingArguments
                ) -> DistillationTrainer:
    trainer = DistillationTrainer(
        model=model, teacher_model=list(teachers) or None, args=args, train_dataset=corpus.train,
        eval_dataset=corpus.val, processing_class=corpus.tokenizer, data_collator=collator_for(p, corpus.tokenizer),
        compute_metrics=_next_token_accuracy if p.task == "clm" else _accuracy)
    if args.disable_tqdm:  # no progress bar wanted: no per-log dict printed either (parallel workers stay quiet)
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer


def train_one(p: TinyPreset, corpus: Corpus, out: Path, steps: int, seed: int, teachers=(), v: Variant | None = None,
              progress: bool = True, save_every: int | None = None, report_to: str = "none") -> DistillationTrainer:
    """Train a student (or teacher: no ``teachers``) from a fresh ``seed`` init; returns the finished trainer.

    With ``save_every``, checkpoints are written and a complete one already in ``out`` is resumed from.
    """
    transformers.set_seed(seed)
    model = new_model(p, corpus)
    trainer = trainer_for(p, corpus, model, teachers, training_args(p, out, steps, seed, v, progress, save_every,
                                                                            report_to))
    resume = latest_complete_checkpoint(out) if save_every else None
    if resume:
        logger.info("resuming %s from %s", out.name, resume)
    trainer.train(resume_from_checkpoint=resume)
    if not any(e.get("step") == steps and "eval_loss" in e for e in trainer.state.log_history):
        trainer.evaluate()  # the final point of every curve is an evaluation
    trainer.save_state()
    return trainer


def _accuracy(eval_pred):
    from ..text.pretrain import mlm_accuracy

    return mlm_accuracy(eval_pred)


def _next_token_accuracy(eval_pred):
    from ..text.pretrain import next_token_accuracy

    return next_token_accuracy(eval_pred)


def teacher_steps(p: TinyPreset) -> dict[str, tuple[int, int]]:
    """Teacher name -> (steps, seed): a good one trained 3x the students' budget, a second, a poor one."""
    return {"good": (p.good_teacher_steps, 101), "second": (p.second_teacher_steps, 102),
            "poor": (p.poor_teacher_steps, 103)}


def cache_folder(kind: str, name: str, key_parts: list) -> Path:
    return cache_root() / kind / f"{name}-{hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]}"


def cached_teacher(kind: str, name: str, key_parts: list, train) -> tuple[Path, dict]:
    """``train(folder) -> meta`` once per key (the paper's "recycle"); later calls reuse the cached folder.

    The folder is built under a ``.partial`` name and renamed when complete, so a killed run never leaves a
    half-trained teacher in the cache.
    """
    folder = cache_folder(kind, name, key_parts)
    if (folder / "teacher.json").is_file():
        logger.info("reusing cached teacher %s from %s", name, folder)
        return folder, json.loads((folder / "teacher.json").read_text())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"name": name, **train(tmp)}
    (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder, meta


def ensure_teacher(name: str, p: TinyPreset, corpus: Corpus, progress: bool = True) -> tuple[Path | str, dict]:
    """Train a text teacher once, cached by (what shapes it, corpus); or evaluate the preset's recycled one."""
    if p.recycled_teacher and name == "good":
        return p.recycled_teacher, recycled_teacher_meta(p, corpus)
    steps, seed = teacher_steps(p)[name]

    def train(folder: Path) -> dict:
        trainer = train_one(replace(p, eval_every=max(p.eval_every, steps // 6)), corpus, folder, steps, seed,
                            progress=progress)
        trainer.save_model()
        return {"steps": steps, "seed": seed, "gpu_hours": trainer.cost_callback.meter.gpu_hours,
                "final_quality": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][-1]}

    return cached_teacher(teacher_kind(p), name, teacher_key(name, p, corpus), train)


def teacher_kind(p: TinyPreset) -> str:
    """The cache folder of the preset's teachers: causal-LM teachers are kept apart from the MLM ones."""
    return "clm_teachers" if p.task == "clm" else "teachers"


def preset_key(p: TinyPreset) -> dict:
    """The preset as part of every run's key; ``task`` only when not MLM, so MLM runs made before it existed
    are still recognised as finished."""
    d = asdict(p)
    if d["task"] == "mlm":
        del d["task"]
    return d


def teacher_key(name: str, p: TinyPreset, corpus: Corpus) -> list:
    # Only what shapes the teacher goes into the key, so tuning the students' KD knobs reuses it.
    steps, seed = teacher_steps(p)[name]
    return [{k: getattr(p, k) for k in TEACHER_KEY_FIELDS}, steps, seed, corpus.fingerprint]


def teacher_steps_to_train(name: str, p: TinyPreset, corpus: Corpus) -> int:
    """Steps this teacher still needs: 0 when recycled or already cached."""
    if p.recycled_teacher and name == "good":
        return 0
    done = (cache_folder(teacher_kind(p), name, teacher_key(name, p, corpus)) / "teacher.json").is_file()
    return 0 if done else teacher_steps(p)[name][0]


def recycled_teacher_meta(p: TinyPreset, corpus: Corpus) -> dict:
    """A pretrained teacher's quality on this validation set (its training cost is sunk: not ours)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(p, corpus, load_teacher(p.recycled_teacher, p.task), (),
                              training_args(p, Path(tmp), 1, 0, report_progress=False))
        metrics = trainer.evaluate()
    return {"steps": "recycled", "seed": None, "gpu_hours": 0.0, "source": p.recycled_teacher,
            "final_quality": metrics["eval_loss"], "final_accuracy": metrics.get("eval_accuracy")}


def load_teacher(path: str, task: str = "mlm"):
    auto = transformers.AutoModelForCausalLM if task == "clm" else transformers.AutoModelForMaskedLM
    return auto.from_pretrained(path)


def run_dir_for(v: Variant, steps: int, seed: int, out: Path, baseline_dir: Path | None = None) -> Path:
    """``out/runs/<variant>-seed<i>``; runs without teachers go to ``baseline_dir`` (when given) by step count,
    where protocols with other budgets find and reuse them (the regime study's cells share one)."""
    if baseline_dir is not None and not v.teachers:
        return baseline_dir / f"baseline-{steps}steps-seed{seed}"
    return out / "runs" / f"{v.name}-seed{seed}"


def plan_jobs(p: TinyPreset, vs: list[Variant], seeds: int, out: Path, baseline_dir: Path | None = None) -> list:
    """Teachers first, then the longest trainings first (so parallel workers finish together)."""
    from .jobs import Job

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
    return jobs + sorted(runs, key=lambda j: (bool(j.needs), -j.steps))


def run_tiny(output_dir: str, corpus_path: str | None = None, seeds: int = 1, preset: TinyPreset | None = None,
             only: list[str] | None = None, full: bool = True, workers: int = 1, threads: int = 1,
             calibrate: bool = True, report_to: str = "none", baseline_dir: str | None = None) -> dict:
    """Run the protocol (resumable: finished runs are reused); returns the results dict (also in ``output_dir``).

    ``report_to``: the students' Trainer tracker(s) (``"tensorboard"``, ``"wandb"``, ...; one run each).
    ``baseline_dir``: a folder of runs without teachers shared with other protocols (see :func:`run_dir_for`)."""
    from .calibrate import kinds_for, load_or_measure, measure_step_costs
    from .jobs import Context, execute, log_plan
    from .report import write_report

    p = preset or TinyPreset()
    vs = select_variants(p, only, full)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(p, corpus_path)
    ctx = Context(p, corpus, save_every=2 * p.eval_every, key={"preset": preset_key(p), "corpus": corpus.fingerprint},
                  report_to=report_to)
    jobs = plan_jobs(p, vs, seeds, out, Path(baseline_dir) if baseline_dir else None)
    calibration = None
    if calibrate:
        kinds = kinds_for([{"teachers": v.teachers, "selection": v.selection, "kd_stop_ratio": v.kd_stop_ratio}
                           for v in vs])
        torch.set_num_threads(threads)
        calibration = load_or_measure(out / "calibration.json", {**ctx.key, "kinds": kinds, "threads": threads},
                                      lambda: measure_step_costs(p, corpus, kinds))
    if calibration:
        log_plan(jobs, calibration, workers, sum(teacher_steps_to_train(j.name, p, corpus) for j in jobs
                                                 if j.variant is None))
    if workers > 1:
        save_corpus(corpus, out / "corpus")
        ctx = Context(p, None, str(out / "corpus"), ctx.save_every, ctx.key, report_to)
    teachers, runs = execute(jobs, ctx, workers, threads)
    names = [v.name for v in vs]
    runs.sort(key=lambda r: (r["seed"], names.index(r["variant"])))
    results = {"preset": asdict(p), "corpus": corpus.name, "corpus_stats": corpus.stats,
               "regime": {"unigram_entropy": unigram_entropy(corpus.val, corpus.tokenizer.pad_token_id)}, "calibration": calibration,
               "teachers": {n: t["meta"] for n, t in teachers.items()}, "runs": runs}
    return write_report(results, out, "clm" if p.task == "clm" else "text")
