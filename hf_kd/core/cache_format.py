"""On-disk format of a teacher-output cache: the :class:`Manifest` (``manifest.json``) and checksummed, atomically
published safetensors shards (``shard-<rank>-<index>.safetensors``). The reader is ``hf_kd/core/teacher_cache.py``;
the producer ``hf_kd/text/cache_producer.py``; the format is defined in ``docs/design.md`` ("Teacher-output cache").

A shard holds, for one rank and ``steps_per_shard`` consecutive optimizer steps, three tensors per micro-batch
``m`` of step ``s``: ``s<s>.m<m>.ids`` (int32 ``[R, k]``), ``.logp`` (``logp_dtype`` ``[R, k]``) and ``.log_rest``
(float32 ``[R]``), where ``R`` is that micro-batch's number of KD positions in row-major (batch, position) order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import write_bytes_atomic
from .errors import UserError
from .sparse_kd import SparseTargets

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOGP_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TeacherCacheError(UserError):
    """A teacher-output cache that is missing, damaged, or produced for another run (reported in one line)."""


@dataclass
class ShardEntry:
    """One published shard: its file name, the rank whose micro-batches it holds, the steps ``[first, stop)``,
    its byte size and sha256 (checked before any byte of it is used)."""

    name: str
    rank: int
    index: int
    first_step: int
    stop_step: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Everything that determines the cached targets (compared by :func:`mismatch`) plus bookkeeping.

    The stream fields say which batches were cached: the same data (``data_hash``: sha256 over every training
    text), tokenizer, seeds, batch geometry, positions rule and task give the same (step, micro-batch, rank)
    batches. The target fields say what was stored for them. ``steps`` = steps ``0 .. steps-1`` are covered.
    """

    task: str
    teacher_fingerprints: list[str]
    teacher_selection: str
    tokenizer_hash: str
    data_hash: str
    seed: int
    data_seed: int | None
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    block_size: int
    kd_positions: str
    mlm_probability: float | None
    temperature: float
    top_k: int  # tokens stored per KD position (top-k, or the number of draws for sampled targets)
    vocab_size: int
    steps: int
    steps_per_shard: int
    max_train_samples: int | None = None  # caps the chunked training set: another cap is another stream
    targets: str = "top_k"  # "top_k" (loss: rest bucket or renormalise) or "sampled" (loss: missing_mass="sampled")
    logp_dtype: str = "float16"
    ids_dtype: str = "int32"
    log_rest_dtype: str = "float32"
    format_version: int = FORMAT_VERSION
    teacher_names: list[str] = field(default_factory=list)
    teacher_dtype: str = ""  # the dtype the teachers ran in (bfloat16 on a GPU that supports it)
    max_steps: int | None = None
    producing_seconds: float = 0.0
    device_hours: float = 0.0
    device_type: str = ""
    shards: list[ShardEntry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            raw = json.loads(text)
            raw["shards"] = [ShardEntry(**s) for s in raw.get("shards", [])]
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as e:
            raise TeacherCacheError(f"teacher cache manifest {where} is not a valid manifest ({e}); re-run "
                                    "hf-kd cache-teacher") from e


# Fields that must be equal between a cache and the run that reads it (bookkeeping and `steps` are not among them:
# a cache may cover more steps than the run's KD stop step).
MATCH_FIELDS = ("format_version", "task", "teacher_fingerprints", "teacher_selection", "tokenizer_hash", "data_hash",
                "seed", "data_seed", "per_device_train_batch_size", "gradient_accumulation_steps", "world_size",
                "block_size", "max_train_samples", "kd_positions", "mlm_probability", "temperature", "vocab_size")


def mismatch(cache: Manifest, expected: Manifest, kd_stop_step: int | None = None) -> str | None:
    """The first field on which ``cache`` cannot serve ``expected`` as one line naming both values, else None."""
    for name in MATCH_FIELDS:
        have, want = getattr(cache, name), getattr(expected, name)
        if have != want:
            return f"the teacher cache's {name} is {have!r} but this run's is {want!r}"
    if kd_stop_step is not None and cache.steps < kd_stop_step:
        return (f"the teacher cache covers steps 0..{cache.steps - 1} (steps={cache.steps}) but this run takes KD "
                f"until step {kd_stop_step - 1} (kd stop step {kd_stop_step})")
    return None


def shard_name(rank: int, index: int) -> str:
    return f"shard-{rank:05d}-{index:06d}.safetensors"


def target_keys(step: int, micro_batch: int) -> tuple[str, str, str]:
    base = f"s{step}.m{micro_batch}"
    return f"{base}.ids", f"{base}.logp", f"{base}.log_rest"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`hf_kd.core.atomic.write_bytes_atomic`): a reader (or a resumed
    producer) sees the whole file or none."""
    write_bytes_atomic(path, data)


def encode_shard(targets: dict[tuple[int, int], SparseTargets], logp_dtype: str) -> bytes:
    """``{(step, micro_batch): targets}`` -> safetensors bytes, in the stored dtypes."""
    tensors = {}
    for (step, mb), t in targets.items():
        k_ids, k_logp, k_rest = target_keys(step, mb)
        tensors[k_ids] = t.ids.to(torch.int32).contiguous().cpu()
        tensors[k_logp] = t.logp.to(LOGP_DTYPES[logp_dtype]).contiguous().cpu()
        tensors[k_rest] = t.log_rest.float().contiguous().cpu()
    return st_save(tensors, metadata={"format_version": str(FORMAT_VERSION)})


def write_shard(folder: Path, rank: int, index: int, first_step: int, stop_step: int,
                targets: dict[tuple[int, int], SparseTargets], logp_dtype: str) -> ShardEntry:
    data = encode_shard(targets, logp_dtype)
    name = shard_name(rank, index)
    publish_bytes(folder / name, data)
    return ShardEntry(name=name, rank=rank, index=index, first_step=first_step, stop_step=stop_step,
                      bytes=len(data), sha256=sha256_bytes(data))


def read_shard(folder: Path, entry: ShardEntry) -> dict[str, torch.Tensor]:
    """The shard's tensors, after checking its size and sha256; a missing, truncated or altered file is refused."""
    path = folder / entry.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TeacherCacheError(f"teacher cache shard {str(path)!r} cannot be read ({e.strerror}); re-run "
                                "hf-kd cache-teacher to produce it") from e
    problem = shard_problem(data, entry)
    if problem:
        raise TeacherCacheError(f"teacher cache shard {str(path)!r} is damaged ({problem}); re-run hf-kd "
                                "cache-teacher to produce it again")
    return st_load(data)


def shard_problem(data: bytes, entry: ShardEntry) -> str | None:
    if len(data) != entry.bytes:
        return f"{len(data)} bytes, the manifest says {entry.bytes}: truncated or overwritten"
    digest = sha256_bytes(data)
    if digest != entry.sha256:
        return f"sha256 {digest[:12]}..., the manifest says {entry.sha256[:12]}..."
    return None


def file_problem(path: Path, entry: ShardEntry) -> str | None:
    """Why the file at ``path`` is not the published ``entry`` (None when it is): used to keep a resumed
    producer's finished shards only when they are intact."""
    try:
        return shard_problem(path.read_bytes(), entry)
    except OSError as e:
        return e.strerror or str(e)
