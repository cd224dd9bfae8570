"""Reading a teacher-output cache: ``TeacherCache.open(dir)`` -> ``targets(step, micro_batch, rank)``.

A student's micro-batch ``m`` of optimizer step ``s`` on rank ``r`` reads exactly the targets the producer computed
for that same batch (``docs/design.md``, "Teacher-output cache"). Before any training, :meth:`check_matches`
refuses a cache made for another stream or teacher in one line naming the field and both values, and
:meth:`verify` checks every shard's size and sha256; a damaged shard is never read as zeros.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .cache_format import (
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    ShardEntry,
    TeacherCacheError,
    mismatch,
    read_shard,
    target_keys,
)
from .sparse_kd import SparseTargets

logger = logging.getLogger(__name__)

__all__ = ["TeacherCache", "TeacherCacheError", "Manifest", "SparseTargets"]


class TeacherCache:
    """A published cache folder. Shards are loaded (and checksummed) on first use; the last one is kept."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = folder
        self.manifest = manifest
        self._by_address = {(e.rank, e.index): e for e in manifest.shards}
        self._loaded: tuple[ShardEntry, dict[str, torch.Tensor]] | None = None
        # Pinned host memory lets a reader copy targets to the GPU asynchronously (non_blocking): set by the reader.
        self.pin_memory = False

    @classmethod
    def open(cls, folder: str | Path) -> TeacherCache:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            hint = " (production unfinished: run hf-kd cache-teacher again to complete it)" if any(
                folder.glob("progress-*.json")) else ""
            raise TeacherCacheError(f"--kd_teacher_cache {str(folder)!r} has no {MANIFEST}{hint}; expected a folder "
                                    "written by hf-kd cache-teacher")
        manifest = Manifest.from_json(path.read_text(), str(path))
        if manifest.format_version != FORMAT_VERSION:
            raise TeacherCacheError(f"teacher cache {str(folder)!r} has format_version {manifest.format_version}, "
                                    f"this hf-kd reads {FORMAT_VERSION}; re-run hf-kd cache-teacher")
        return cls(folder, manifest)

    def check_matches(self, expected: Manifest, kd_stop_step: int | None = None) -> None:
        """Refuse (one line, :class:`TeacherCacheError`) a cache that was produced for another run."""
        problem = mismatch(self.manifest, expected, kd_stop_step)
        if problem:
            raise TeacherCacheError(f"{problem}: the cache in {str(self.folder)!r} was produced for another run; "
                                    "re-run hf-kd cache-teacher with this run's flags")

    def close(self) -> None:
        """Drop the loaded shard (a run past its KD stop reads no more targets)."""
        self._loaded = None

    def verify(self, ranks: list[int] | None = None) -> None:
        """Check that every step has its shard for each rank and that every shard is intact (size, sha256)."""
        m = self.manifest
        n_index = -(-m.steps // m.steps_per_shard)
        for rank in range(m.world_size) if ranks is None else ranks:
            for index in range(n_index):
                read_shard(self.folder, self._entry(rank, index))
        self._loaded = None

    def _entry(self, rank: int, index: int) -> ShardEntry:
        entry = self._by_address.get((rank, index))
        if entry is None:
            raise TeacherCacheError(f"teacher cache {str(self.folder)!r} lists no shard for rank {rank}, steps from "
                                    f"{index * self.manifest.steps_per_shard}; re-run hf-kd cache-teacher")
        return entry

    def targets(self, step: int, micro_batch: int, rank: int = 0) -> SparseTargets:
        """The stored targets of ``(step, micro_batch, rank)`` (CPU tensors; logp in its stored dtype)."""
        if not 0 <= step < self.manifest.steps:
            raise TeacherCacheError(f"step {step} is outside the teacher cache's steps 0..{self.manifest.steps - 1}")
        entry = self._entry(rank, step // self.manifest.steps_per_shard)
        if self._loaded is None or self._loaded[0] is not entry:
            tensors = read_shard(self.folder, entry)
            self._loaded = (entry, {k: v.pin_memory() for k, v in tensors.items()} if self.pin_memory else tensors)
        tensors = self._loaded[1]
        k_ids, k_logp, k_rest = target_keys(step, micro_batch)
        if k_ids not in tensors:
            raise TeacherCacheError(f"teacher cache shard {entry.name!r} holds no micro-batch {micro_batch} of step "
                                    f"{step}; expected gradient_accumulation_steps "
                                    f"{self.manifest.gradient_accumulation_steps}")
        return SparseTargets(ids=tensors[k_ids], logp=tensors[k_logp], log_rest=tensors[k_rest])
