"""Teacher targets replayed from a teacher-output cache (``--kd_teacher_cache``): a :class:`TeacherSource` that
holds no teacher.

Micro-batch ``m`` of optimizer step ``s`` on rank ``r`` reads the targets ``hf-kd cache-teacher`` computed for
that very batch (``TeacherCache.targets(s, m, r)``): the Trainer calls the objective once per micro-batch, in
order, and the objective asks its source once per micro-batch of a KD step, so the micro-batch index is the
count of requests within the step. The rows are those of the live path (:mod:`hf_kd.text.cache_stream` selects
them alike); a count that differs is refused, never padded.

Hot path: reading a shard (and checking its sha256) is host work, once per ``steps_per_shard`` steps; on a GPU
the shard is pinned so each micro-batch's targets reach the device with an asynchronous copy -- nothing here
reads a device value.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque

import torch

from ..core.schedule import teacher_indices
from ..core.sparse_kd import SparseTargets
from ..core.teacher_cache import TeacherCache
from .rows import Rows
from .teacher_targets import TEACHER_CALLS_KEPT

logger = logging.getLogger(__name__)


class CachedTeachers:
    """Stored sparse targets, one :class:`SparseTargets` per micro-batch (an ensemble's is stored mixed).

    Args:
        cache: the opened cache; rank: this process's rank; device: the training device.
        selection, seed: as for live teachers; only used to record which teacher a ``sample`` step stands for.
    """

    def __init__(self, cache: TeacherCache, rank: int, device, selection: str, seed: int):
        self.cache, self.rank, self.device = cache, rank, torch.device(device)
        self.selection, self.seed = selection, seed
        self.modules: list[torch.nn.Module] = []  # no teacher in memory
        self.calls: deque[tuple[int, int]] = deque(maxlen=TEACHER_CALLS_KEPT)
        self.released = False
        self.missing_mass = "sampled" if cache.manifest.targets == "sampled" else "rest"
        self._count = max(1, len(cache.manifest.teacher_fingerprints))
        self._step, self._micro_batch = -1, -1
        cache.pin_memory = self.device.type == "cuda"

    def __len__(self) -> int:
        return self._count

    def targets(self, inputs: dict, rows: Rows, step: int) -> list[SparseTargets]:
        if self.released:
            raise RuntimeError(f"teacher targets asked for at step {step}, after the KD stop")
        self._micro_batch = self._micro_batch + 1 if step == self._step else 0
        self._step = step
        for i in teacher_indices(step, self._count, self.selection, self.seed):
            self.calls.append((step, i))
        t = self.cache.targets(step, self._micro_batch, self.rank)
        blocking = not self.cache.pin_memory
        return [SparseTargets(t.ids.to(self.device, non_blocking=not blocking),
                              t.logp.to(self.device, non_blocking=not blocking),
                              t.log_rest.to(self.device, non_blocking=not blocking))]

    def release(self) -> None:
        if not self.released:
            self.cache.close()
            self.released = True
            logger.info("KD stopped: no more teacher-cache reads")


def fields_known_to_trainer(args, model: torch.nn.Module, task: str) -> dict:
    """The manifest fields a ``DistillationTrainer`` knows by itself, before it is built (the script path checks
    the data and tokenizer too: ``hf_kd.text.cache_manifest.check_cache_for_run``)."""
    return dict(task=task, teacher_selection=args.kd_teacher_selection, seed=args.seed, data_seed=args.data_seed,
                per_device_train_batch_size=args.per_device_train_batch_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps, world_size=max(1, args.world_size),
                kd_positions=args.kd_positions, temperature=args.kd_temperature,
                vocab_size=model.get_output_embeddings().weight.shape[0])


def check_fields(cache: TeacherCache, known: dict, kd_stop_step: int | None = None) -> None:
    """Refuse the cache if it differs from ``known`` fields (others taken as the cache's) or lacks KD steps."""
    cache.check_matches(dataclasses.replace(cache.manifest, **known), kd_stop_step)


def open_teacher_cache(args, teacher_model) -> TeacherCache | None:
    """The run's ``kd_teacher_cache`` opened (manifest read, format checked), or None without one."""
    if args.kd_teacher_cache is None:
        return None
    if teacher_model is not None:
        raise ValueError("a teacher model and kd_teacher_cache were both given; expected one source of teacher "
                         "targets (the cache replaces the teacher)")
    return TeacherCache.open(args.kd_teacher_cache)
