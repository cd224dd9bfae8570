"""Recycled teacher outputs for ``hf-kd reproduce``'s text runs: caches produced once, read by the cached runs.

Production and reading go through the library's own path -- :func:`hf_kd.text.cache_producer.produce_for_trainer`
on a trainer built by the scripts' factory with the run's flags, and ``--kd_teacher_cache`` with the check
``run_mlm_kd.py`` makes (:func:`hf_kd.text.cache_manifest.check_cache_for_run`) -- so a reproduce cache is an
``hf-kd cache-teacher`` cache of that stream. The corpus's fingerprint (every text and the vocabulary) stands
for the data's content hash: reproduce hashes its corpus once.

The calibration's two extra step kinds (:mod:`.costs`) are timed here on the calibration batches: ``cached`` (a
student step through the run's own ``compute_loss`` reading targets stored for those very batches) and
``produce<k>`` (one step's targets: the teachers' inference forwards, top-k, and the shard written to disk).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.cache_format import MANIFEST, TeacherCacheError, publish_bytes, write_shard
from ..text.cache_manifest import CacheArguments, check_cache_for_run, stream_manifest
from ..text.cache_producer import produce_for_trainer, producer_teacher_dtype
from ..text.cache_targets import ShardProducer
from .protocol import CacheSpec, TeacherRecord, Variant

logger = logging.getLogger(__name__)


def cache_arguments(backend) -> CacheArguments:
    return CacheArguments(task=backend.task, top_k=backend.preset.cache_top_k)


def _producer_trainer(backend, spec: CacheSpec, teacher_paths: list[str]):
    v = Variant(spec.name, spec.teachers, selection=spec.selection)
    args = backend.args(Path(spec.folder), spec.max_steps, spec.seed, v)
    args.teacher_model_name_or_path = list(teacher_paths)
    args.teacher_dtype = producer_teacher_dtype(args)
    return backend.trainer_for_args(args)


def produce(backend, spec: CacheSpec, teachers: list[TeacherRecord]) -> TeacherRecord:
    """Produce ``spec``'s cache (resuming intact shards; a folder made for other teachers or another stream is
    produced again) and return its record: the manifest's cost and size for the report."""
    trainer = _producer_trainer(backend, spec, [t.path for t in teachers])
    cache_args = cache_arguments(backend)
    manifest = stream_manifest(backend.model_args(), backend.data_args(), trainer.args, cache_args, backend.task,
                               trainer, spec.steps, data_hash=backend.corpus.fingerprint)
    folder = Path(spec.folder)
    try:
        manifest = produce_for_trainer(trainer, manifest, folder, cache_args)
    except TeacherCacheError as e:  # a cache of an earlier plan (another teacher, corpus, k): not ours to keep
        logger.info("%s holds another cache (%s): producing it again", folder.name, e)
        shutil.rmtree(folder)
        manifest = produce_for_trainer(trainer, manifest, folder, cache_args)
    del trainer
    meta = {"name": spec.name, "teachers": list(spec.teachers), "selection": spec.selection, "seed": spec.seed,
            "steps": manifest.steps, "top_k": manifest.top_k, "logp_dtype": manifest.logp_dtype,
            "bytes": sum(e.bytes for e in manifest.shards), "producing_seconds": manifest.producing_seconds,
            "gpu_hours": manifest.device_hours, "device_type": manifest.device_type}
    return TeacherRecord(str(folder), meta)


def check_for_run(backend, trainer, teacher_paths: list[str]) -> None:
    """Refuse (one line) a cache that does not serve this run: the scripts' own check, on reproduce's corpus."""
    trainer.args.teacher_model_name_or_path = list(teacher_paths)  # compared, not loaded: the cache replaces them
    check_cache_for_run(backend.model_args(), backend.data_args(), trainer.args, trainer, backend.task,
                        data_hash=backend.corpus.fingerprint)


def _on_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def calibration_cache(backend, folder: Path, student: torch.nn.Module, teacher: torch.nn.Module,
                      batches: list[dict]) -> Path:
    """A cache of ``teacher``'s targets for ``batches`` (step ``i`` = batch ``i``), written as the producer does."""
    trainer = backend.trainer(folder / "calibration-producer", 1000, 0, [copy.deepcopy(teacher)],
                              Variant("produce", ("good",)), student=copy.deepcopy(student))
    cache_args = dataclasses.replace(cache_arguments(backend), steps_per_shard=len(batches))
    producer = ShardProducer(trainer, backend.task, cache_args.top_k, None)
    targets = producer.targets([(i, 0, _on_device(b, trainer.args.device)) for i, b in enumerate(batches)])
    out = folder / "calibration-cache"
    out.mkdir(parents=True, exist_ok=True)
    entry = write_shard(out, 0, 0, 0, len(batches), targets, cache_args.logp_dtype)
    manifest = stream_manifest(backend.model_args(), backend.data_args(), trainer.args, cache_args, backend.task,
                               trainer, len(batches), fingerprints=["calibration"], data_hash="calibration")
    publish_bytes(out / MANIFEST, dataclasses.replace(manifest, shards=[entry]).to_json().encode())
    return out


def cached_stepper(backend, folder: Path, student: torch.nn.Module, cache: Path, batches: list[dict],
                   training_step: Callable) -> Callable[[dict], None]:
    """One optimizer step of a cached run: the trainer reads the targets stored for the batch it is given.
    ``training_step(trainer, model)``: the back end's calibration step (the same for every kind)."""
    model = copy.deepcopy(student).train()
    trainer = backend.trainer(folder / "cached", 1000, 0, [], Variant("cached", ("good",), outputs="cached"),
                              student=model, kd_teacher_cache=str(cache))
    trainer.state.max_steps = 1000
    index = {id(b): i for i, b in enumerate(batches)}
    train = training_step(trainer, model)

    def step(batch: dict) -> None:
        trainer.state.global_step = index[id(batch)]  # the cached step whose targets belong to this batch
        train(batch)

    return step


def produce_stepper(backend, folder: Path, student: torch.nn.Module, teachers: list[torch.nn.Module],
                    kind: str) -> Callable[[dict], None]:
    """Producing one step's targets with ``teachers``: inference forwards, top-k and the shard written."""
    trainer = backend.trainer(folder / kind, 1000, 0, [copy.deepcopy(t) for t in teachers],
                              Variant(kind, ("good",) * len(teachers)), student=copy.deepcopy(student))
    producer = ShardProducer(trainer, backend.task, backend.preset.cache_top_k, None)
    out = folder / f"{kind}-shards"
    out.mkdir(parents=True, exist_ok=True)

    def step(batch: dict) -> None:
        targets = producer.targets([(0, 0, _on_device(batch, trainer.args.device))])
        write_shard(out, 0, 0, 0, 1, targets, "float16")

    return step
