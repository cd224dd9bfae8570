"""``hf-kd cache-teacher``: run the teacher(s) once over the KD positions of a training stream and store sparse targets.

    hf-kd cache-teacher --task mlm --teacher_model_name_or_path runs/teacher --output_dir caches/mlm \
        --max_steps 1000 --kd_stop_ratio 0.5 --kd_temperature 1 [the student run's other flags] [--top_k 64]

Takes the flags of the training script it serves (``run_mlm_kd.py`` / ``run_clm_kd.py``) and builds the stream
through the same factory (:func:`hf_kd.text.pretrain.build_trainer`), so step ``s``, micro-batch ``m`` on rank ``r``
holds exactly the batch the student will train on there. Only steps before the KD stop are produced; the teachers
run in eval mode under ``inference_mode``. Shards are published one at a time (atomically) and listed in
``progress-<rank>.json``; an interrupted run, started again with the same flags, keeps every intact shard. Under
``accelerate launch`` each process writes its own rank's shards; the main process writes ``manifest.json`` last.
Format: ``docs/design.md`` ("Teacher-output cache"); usage and measurements: ``docs/cache.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from ..core.cache_format import (
    MANIFEST,
    Manifest,
    ShardEntry,
    TeacherCacheError,
    file_problem,
    mismatch,
    publish_bytes,
    write_shard,
)
from ..core.errors import UserError
from ..core.schedule import resolve_kd_stop_step
from .cache_manifest import DEFAULT_TOP_K, TASKS, CacheArguments, stream_manifest, teacher_fingerprint
from .cache_stream import training_batches
from .cache_targets import ShardProducer
from .config import DistillationTrainingArguments
from .pretrain import build_trainer
from .script_args import ClmDataArguments, DataArguments, ModelArguments

logger = logging.getLogger(__name__)

# The flags and the expected manifest live in cache_manifest.py (a reading run needs them too); re-exported here.
__all__ = ["DEFAULT_TOP_K", "TASKS", "CacheArguments", "main", "produce_cache", "produce_for_trainer", "stream_manifest",
           "teacher_fingerprint"]

def device_type() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def producer_teacher_dtype(args: DistillationTrainingArguments) -> str:
    """'auto' -> bfloat16 on a GPU that supports it (inference only: half the memory and time), else the run's own."""
    if args.teacher_dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return args.teacher_dtype


def produce_cache(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                  cache_args: CacheArguments, task: str = "mlm") -> Manifest:
    """Write (or complete) the cache in ``args.output_dir``; returns its manifest (all ranks)."""
    if not args.teacher_model_name_or_path:
        raise UserError("hf-kd cache-teacher needs --teacher_model_name_or_path (one or several teachers)")
    if args.kd_alpha == 0:
        raise UserError("--kd_alpha 0 takes no KD, so there is nothing to cache; expected kd_alpha > 0")
    if args.max_steps <= 0:
        raise UserError(f"--max_steps {args.max_steps} is invalid here; expected the student run's max_steps (> 0)")
    args.teacher_dtype = producer_teacher_dtype(args)
    started = time.perf_counter()
    trainer = build_trainer(model_args, data_args, args, task=task)
    stop = min(resolve_kd_stop_step(args.max_steps, args.kd_stop_ratio, args.kd_stop_steps), args.max_steps)
    manifest = stream_manifest(model_args, data_args, args, cache_args, task, trainer, stop)
    return produce_for_trainer(trainer, manifest, Path(args.output_dir), cache_args, started)


def produce_for_trainer(trainer, manifest: Manifest, folder: Path, cache_args: CacheArguments,
                        started: float | None = None) -> Manifest:
    """Write (or complete) ``manifest``'s cache in ``folder`` from a built ``trainer`` (its stream and teachers).

    ``hf-kd reproduce`` enters here with the trainer its student runs are built with (a corpus tokenized once)."""
    started = time.perf_counter() if started is None else started
    if trainer.accelerator.is_main_process:  # before any rank writes: the others' files would look foreign
        _check_folder(folder, manifest)
    trainer.accelerator.wait_for_everyone()
    if (folder / MANIFEST).is_file():
        logger.info("%s already holds this complete teacher cache; nothing to do", folder)
        return Manifest.from_json((folder / MANIFEST).read_text())
    rank = trainer.accelerator.process_index
    done = _resume_state(folder, rank, manifest)
    seconds = done.get("seconds", 0.0)
    entries = {e.index: e for e in done.get("shards", [])}
    if entries:
        logger.info("resuming: %d intact shard(s) of rank %d kept", len(entries), rank)
    producer = ShardProducer(trainer, manifest.task, manifest.top_k, cache_args.producer_batch_size,
                             sampled=manifest.targets == "sampled")
    _run_shards(trainer, producer, manifest, folder, rank, entries, seconds, started)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        manifest = _publish_manifest(folder, manifest)
    trainer.accelerator.wait_for_everyone()
    return Manifest.from_json((folder / MANIFEST).read_text())


def _run_shards(trainer, producer: ShardProducer, manifest: Manifest, folder: Path, rank: int,
                entries: dict[int, ShardEntry], seconds: float, started: float) -> None:
    from tqdm.auto import tqdm

    per = manifest.steps_per_shard
    bar = tqdm(total=manifest.steps, desc=f"teacher cache (rank {rank})", unit="step",
               disable=not trainer.accelerator.is_local_main_process)
    items: list[tuple[int, int, dict]] = []
    for step, batches in training_batches(trainer, manifest.steps):
        index = step // per
        if index not in entries:
            items.extend((step, mb, b) for mb, b in enumerate(batches))
        if (step + 1) % per == 0 or step + 1 == manifest.steps:
            if index not in entries:
                targets = producer.targets(items)
                entries[index] = write_shard(folder, rank, index, index * per, min((index + 1) * per, manifest.steps),
                                             targets, manifest.logp_dtype)
                now = time.perf_counter()
                seconds, started = seconds + now - started, now
                _write_progress(folder, rank, manifest, entries, seconds)
            items = []
        bar.update(1)
    bar.close()
    _write_progress(folder, rank, manifest, entries, seconds + time.perf_counter() - started)


def _progress_path(folder: Path, rank: int) -> Path:
    return folder / f"progress-{rank:05d}.json"


def _write_progress(folder: Path, rank: int, manifest: Manifest, entries: dict[int, ShardEntry], seconds: float):
    head = dataclasses.replace(manifest, shards=[])
    data = {"manifest": json.loads(head.to_json()), "seconds": seconds,
            "shards": [dataclasses.asdict(e) for _, e in sorted(entries.items())]}
    publish_bytes(_progress_path(folder, rank), json.dumps(data, indent=1).encode())


def _production_problem(earlier: Manifest, manifest: Manifest) -> str | None:
    """Why targets produced under ``earlier`` cannot stand for ``manifest``'s (same stream and same targets)."""
    for name in ("targets", "top_k", "logp_dtype"):
        if getattr(earlier, name) != getattr(manifest, name):
            return f"{name} {getattr(earlier, name)!r} there, {getattr(manifest, name)!r} here"
    return mismatch(earlier, manifest, manifest.steps)


def _check_folder(folder: Path, manifest: Manifest) -> None:
    """An output folder must be new/empty, an unfinished production (resumed), or this very cache (nothing to do)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        problem = _production_problem(Manifest.from_json((folder / MANIFEST).read_text()), manifest)
        if problem:
            raise TeacherCacheError(f"--output_dir {str(folder)!r} holds another teacher cache ({problem}); "
                                    "use another --output_dir")
        return
    ours = ("progress-", "shard-", ".shard-", ".progress-")
    foreign = [p.name for p in folder.iterdir() if not p.name.startswith(ours)]
    if foreign:
        raise TeacherCacheError(f"--output_dir {str(folder)!r} is not empty ({foreign[0]!r}, ...) and holds no "
                                "unfinished teacher cache; expected an empty or new folder")


def _resume_state(folder: Path, rank: int, manifest: Manifest) -> dict:
    """Intact shards of an earlier, interrupted run with the same flags (others are produced again)."""
    path = _progress_path(folder, rank)
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    earlier = Manifest.from_json(json.dumps(raw["manifest"]), str(path))
    problem = _production_problem(earlier, manifest) or (
        None if earlier.steps_per_shard == manifest.steps_per_shard else
        f"steps_per_shard {earlier.steps_per_shard} there, {manifest.steps_per_shard} here")
    if problem:
        raise TeacherCacheError(f"{str(folder)!r} holds a cache being produced with other flags ({problem}); "
                                "use another --output_dir")
    kept = []
    for e in (ShardEntry(**s) for s in raw["shards"]):
        why = file_problem(folder / e.name, e)
        if why is None:
            kept.append(e)
        else:
            logger.warning("shard %s is not intact (%s): producing it again", e.name, why)
    return {"shards": kept, "seconds": float(raw.get("seconds", 0.0))}


def _publish_manifest(folder: Path, manifest: Manifest) -> Manifest:
    shards, seconds = [], []
    for rank in range(manifest.world_size):
        raw = json.loads(_progress_path(folder, rank).read_text())
        shards.extend(ShardEntry(**s) for s in raw["shards"])
        seconds.append(float(raw["seconds"]))
    manifest = dataclasses.replace(manifest, shards=shards, producing_seconds=max(seconds),
                                   device_hours=sum(seconds) / 3600, device_type=device_type())
    publish_bytes(folder / MANIFEST, manifest.to_json().encode())
    return manifest


def main(argv: list[str] | None = None) -> Manifest:
    """``hf-kd cache-teacher [--task mlm|clm] [the training script's flags] [--top_k K] ...``."""
    from ..core.cli_utils import parse_args

    argv = list(argv or [])
    # The data flags depend on the task (--block_size for clm): read --task before parsing the rest.
    task = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--task"),
                next((a.split("=", 1)[1] for a in argv if a.startswith("--task=")), "mlm"))
    data_cls = ClmDataArguments if task == "clm" else DataArguments
    model_args, data_args, args, cache_args = parse_args(
        (ModelArguments, data_cls, DistillationTrainingArguments, CacheArguments), argv, prog="hf-kd cache-teacher")
    manifest = produce_cache(model_args, data_args, args, cache_args, cache_args.task)
    logger.info("teacher cache in %s: steps 0..%d, k=%d, %d shard(s), %.3g device-hours (%s)", args.output_dir,
                manifest.steps - 1, manifest.top_k, len(manifest.shards), manifest.device_hours, manifest.device_type)
    return manifest
