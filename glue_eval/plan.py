"""What a GLUE run will fine-tune, decided before anything trains: tasks, hyperparameters, results keys.

A :class:`Job` is one fine-tune (model, task, seed, learning rate of the grid if any) with the ``config``
that keys its results line (``glue_eval.results``). Planning every job up front lets a sweep validate all
inputs before the first write, skip the finished jobs, and show one "k/N fine-tunes" bar::

    from glue_eval.plan import plan_model, validate
    tasks = validate(gargs, fargs)
    jobs = plan_model("runs/kd/checkpoint-1000", {"run": "kd", "checkpoint": "checkpoint-1000"}, gargs, fargs,
                      tasks, "glue/work")
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from transformers import AutoConfig

from .args import TABLE_FIELDS, FinetuneArguments, GlueArguments
from .data import HUB_DATASET, check_glue_dir
from .quiet import quiet_loads
from .results import config_hash
from .tasks import HParams, resolve_tasks, task_hparams

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
# TrainingArguments fields that change a fine-tune's result (besides the table's hyperparameters and seed).
SHAPING_FIELDS = ("max_steps", "gradient_accumulation_steps", "optim", "optim_args", "adam_beta1", "adam_beta2",
                  "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs",
                  "label_smoothing_factor", "bf16", "fp16", "tf32", "torch_compile", "torch_compile_mode",
                  "deepspeed", "fsdp", "train_sampling_strategy", "neftune_noise_alpha", "full_determinism")


@dataclass
class Job:
    """One fine-tune and the fields its results line shares with the model's other lines."""

    model_path: str
    record: dict  # run, checkpoint, step, gpu_hours, run_path ...
    task: str
    seed: int
    hp: HParams
    config: dict
    work_dir: Path

    @property
    def line(self) -> dict:
        """The results line's identifying fields (``glue_eval.results.entry_key`` reads them)."""
        return {**self.record, "model": self.model_path, "task": self.task, "seed": self.seed,
                "config": self.config, "config_hash": config_hash(self.config), "lr_grid": self.config["lr_grid"]}

    @property
    def name(self) -> str:
        lr = f"--lr{self.hp.learning_rate:g}" if self.config["lr_grid"] else ""
        return f"{self.record['run']}--{self.record['checkpoint']}--{self.task}--seed{self.seed}{lr}"


def hparams_for(task: str, gargs: GlueArguments, fargs: FinetuneArguments) -> HParams:
    """The table's row, then the TrainingArguments flags the user gave (all tasks), then per-task overrides."""
    overrides = {k: getattr(fargs, k) for k in TABLE_FIELDS if k in fargs.given}
    overrides.update(warmup_ratio=gargs.warmup_ratio, max_seq_length=gargs.max_seq_length)
    return task_hparams(task, overrides, gargs.hparam_overrides)


def validate(gargs: GlueArguments, fargs: FinetuneArguments) -> list[str]:
    """Resolved task list; raises on a bad task name, override or GLUE folder (before any write)."""
    tasks = resolve_tasks(gargs.tasks)
    for t in tasks:
        hparams_for(t, gargs, fargs)
    if gargs.learning_rates and "learning_rate=" in (gargs.hparam_overrides or ""):
        raise ValueError("--hparam_overrides sets a learning_rate while --learning_rates gives a grid; expected one")
    if gargs.glue_dir is not None:
        check_glue_dir(gargs.glue_dir, tasks)
    return tasks


def weight_files(folder: Path) -> list[Path]:
    """The model weight files of a checkpoint folder (shards named by an index included); [] if none."""
    found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    for index in [f for f in found if f.name.endswith(".index.json")]:
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        if not all((folder / s).is_file() for s in shards):
            return []
        found += [folder / s for s in shards]
    return found


def checkpoint_identity(model_path: str) -> dict:
    """Resolved folder and its weight files' (size, mtime_ns); a Hub id as itself."""
    p = Path(model_path)
    if not p.is_dir():
        return {"hub_id": model_path}
    stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in weight_files(p)}
    return {"path": str(p.resolve()), "weights": stats}


def position_limit(model_path: str, trust_remote_code: bool = False) -> int | None:
    """The checkpoint's ``max_position_embeddings`` (longer inputs would index out of range)."""
    try:
        with quiet_loads():  # a probe of one number: not the config's 60 lines per checkpoint
            config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a model config from {model_path!r}: {str(e).strip().splitlines()[0]}") from e
    return getattr(config, "max_position_embeddings", None)


def fit_hparams(hp: HParams, limit: int | None, task: str) -> HParams:
    """``hp`` with ``max_seq_length`` cut to what the model's position embeddings allow (logged)."""
    if limit is None or hp.max_seq_length <= limit:
        return hp
    logger.info("%s: max_seq_length %d > the model's max_position_embeddings %d; using %d", task,
                hp.max_seq_length, limit, limit)
    return replace(hp, max_seq_length=limit)


def warmup_for(hp: HParams, fargs: FinetuneArguments) -> float:
    """``TrainingArguments.warmup_steps`` to apply: the user's ``--warmup_steps``, else the ratio (< 1 = ratio)."""
    return fargs.warmup_steps if "warmup_steps" in fargs.given else hp.warmup_ratio


def job_config(hp: HParams, gargs: GlueArguments, fargs: FinetuneArguments, model_path: str) -> dict:
    """Everything that shapes a fine-tune's result, JSON-able (the seed and task are keyed separately)."""
    training = {f: getattr(fargs, f, None) for f in SHAPING_FIELDS}
    training["warmup_steps"] = warmup_for(hp, fargs)
    return json.loads(json.dumps({
        "hparams": asdict(hp), "training": training,
        "global_batch_size": hp.per_device_train_batch_size * fargs.world_size * fargs.gradient_accumulation_steps,
        "caps": {"max_train_samples": gargs.max_train_samples, "max_eval_samples": gargs.max_eval_samples},
        "data": {"glue_dir": str(Path(gargs.glue_dir).resolve())} if gargs.glue_dir else {"hub": HUB_DATASET},
        "tokenizer": gargs.tokenizer_name, "model": checkpoint_identity(model_path),
        "lr_grid": gargs.learning_rates}, default=str))


def plan_model(model_path: str, record: dict, gargs: GlueArguments, fargs: FinetuneArguments, tasks: list[str],
               work_root: str | Path) -> list[Job]:
    """Every (task, seed[, grid learning rate]) fine-tune of one model, in task order."""
    limit = position_limit(model_path, gargs.trust_remote_code)
    jobs = []
    for task in tasks:
        hp = fit_hparams(hparams_for(task, gargs, fargs), limit, task)
        for lr in gargs.learning_rates or [None]:
            hp_lr = hp if lr is None else replace(hp, learning_rate=lr)
            config = job_config(hp_lr, gargs, fargs, model_path)
            for seed in gargs.seeds:
                jobs.append(Job(model_path, record, task, seed, hp_lr, config, Path(work_root)))
    return jobs
