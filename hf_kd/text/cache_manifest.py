"""The manifest a run implies: what ``hf-kd cache-teacher`` writes, and what a ``--kd_teacher_cache`` run expects.

Both sides build it with :func:`stream_manifest` from the same flags and the same built trainer, so a reading run
refuses (``TeacherCache.check_matches``) a cache produced for another stream or teacher on the first differing
field, before any training (``docs/design.md``, "Teacher-output cache").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.cache_format import LOGP_DTYPES, Manifest
from ..core.errors import UserError
from ..core.fingerprint import model_fingerprint, text_content_hash, tokenizer_hash
from ..core.schedule import resolve_kd_stop_step
from ..core.teacher_cache import TeacherCache
from ..core.teachers import load_pretrained
from .config import DistillationTrainingArguments
from .data import load_raw_splits
from .script_args import DataArguments, ModelArguments
from .teacher_loading import TEACHER_AUTO_CLASS

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 64


TASKS = ("mlm", "clm")


@dataclass
class CacheArguments:
    task: str = field(default="mlm", metadata={"help": "Which training script the cache serves: mlm (run_mlm_kd.py) "
                      "or clm (run_clm_kd.py, which also takes --block_size).", "choices": TASKS})
    top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "Teacher tokens stored per KD position (the rest mass "
                       "is stored too); >= the vocabulary stores the full distribution. Default chosen in docs/cache.md."})
    sample_tokens: int = field(default=0, metadata={"help": "Instead of the top k, store this many tokens drawn from "
                               "the teacher per KD position (Sparse Logit Sampling: an unbiased KD estimate, read with "
                               "missing_mass='sampled'). 0 = top-k targets."})
    producer_batch_size: int | None = field(default=None, metadata={"help": "Sequences per teacher forward (several "
                                            "micro-batches together). Unset = one training micro-batch at a time."})
    logp_dtype: str = field(default="float16", metadata={"help": "dtype of the stored log-probabilities "
                            "(docs/cache.md measures bytes vs loss error).", "choices": tuple(LOGP_DTYPES)})
    steps_per_shard: int = field(default=100, metadata={"help": "Optimizer steps per shard file (and per resume unit)."})

    def __post_init__(self):
        if self.top_k < 1:
            raise UserError(f"--top_k {self.top_k} is invalid; expected an integer >= 1")
        if self.sample_tokens < 0:
            raise UserError(f"--sample_tokens {self.sample_tokens} is invalid; expected 0 (top-k) or an integer >= 1")
        if self.producer_batch_size is not None and self.producer_batch_size < 1:
            raise UserError(f"--producer_batch_size {self.producer_batch_size} is invalid; expected an integer >= 1")
        if self.steps_per_shard < 1:
            raise UserError(f"--steps_per_shard {self.steps_per_shard} is invalid; expected an integer >= 1")


def teacher_fingerprint(name: str, module: torch.nn.Module) -> str:
    """A local teacher folder from its saved files (what a reading run can hash without loading it); a Hub id from
    the weights as loaded, in the dtype they run in."""
    return model_fingerprint(name) if Path(name).is_dir() else model_fingerprint(module)


def stream_manifest(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                    cache_args: CacheArguments, task: str, trainer, stop: int,
                    fingerprints: list[str] | None = None, teacher_dtype: str | None = None,
                    data_hash: str | None = None) -> Manifest:
    """The manifest of the stream and targets this producer (or, later, a reading run) is about.

    ``fingerprints`` / ``teacher_dtype``: the teachers' (a reading run has none loaded); by default from
    ``trainer.teachers``. ``data_hash``: the training data's content hash when the caller has it already (``hf-kd
    reproduce`` hashes its corpus once); by default from the data flags.
    """
    if data_hash is None:
        data_hash = _data_hash(data_args)
    names = list(args.teacher_model_name_or_path or [])
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    return Manifest(
        task=task, teacher_fingerprints=fingerprints if fingerprints is not None else
        [teacher_fingerprint(n, t) for n, t in zip(names, trainer.teachers, strict=True)],
        teacher_selection=args.kd_teacher_selection, tokenizer_hash=tokenizer_hash(trainer.processing_class),
        data_hash=data_hash, seed=args.seed, data_seed=args.data_seed,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, world_size=trainer.accelerator.num_processes,
        block_size=data_args.max_seq_length, max_train_samples=data_args.max_train_samples, kd_positions=args.kd_positions,
        mlm_probability=data_args.mlm_probability if task == "mlm" else None, temperature=args.kd_temperature,
        top_k=cache_args.sample_tokens or min(cache_args.top_k, vocab),
        targets="sampled" if cache_args.sample_tokens else "top_k", vocab_size=vocab, steps=stop, steps_per_shard=cache_args.steps_per_shard,
        logp_dtype=cache_args.logp_dtype, teacher_names=names, max_steps=args.max_steps,
        teacher_dtype=teacher_dtype if teacher_dtype is not None else
        str(next(trainer.teachers[0].parameters()).dtype).removeprefix("torch."))


def _data_hash(data_args: DataArguments) -> str:
    """A content hash of the whole training data (never a sample of it)."""
    if data_args.streaming:  # a Hub stream cannot be read whole here: its identity stands in for its content
        return "stream:" + text_content_hash([str(data_args.dataset_name), str(data_args.dataset_config_name),
                                              str(data_args.train_file)])
    train_raw, _ = load_raw_splits(data_args)
    return text_content_hash(row[data_args.text_column_name] for row in train_raw)


def run_kd_stop_step(trainer) -> int:
    """The optimizer step at which the run's KD stops (its ``max_steps`` from the flags or the dataloader)."""
    args = trainer.args
    max_steps = args.max_steps
    if max_steps <= 0:
        max_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    return min(resolve_kd_stop_step(max_steps, args.kd_stop_ratio, args.kd_stop_steps), max_steps)


def expected_fingerprints(args: DistillationTrainingArguments, cache: Manifest, task: str) -> list[str]:
    """The fingerprints of ``--teacher_model_name_or_path`` as the producer took them (a local folder from its
    files, a Hub teacher from its weights loaded in the producer's dtype); without teachers, the cache's own."""
    names = args.teacher_model_name_or_path
    if not names:
        return list(cache.teacher_fingerprints)
    prints = []
    for name in names:
        if Path(name).is_dir():
            prints.append(model_fingerprint(name))
            continue
        dtype = getattr(torch, cache.teacher_dtype or "float32")
        module = load_pretrained(name, TEACHER_AUTO_CLASS[task], dtype=dtype,
                                 trust_remote_code=args.teacher_trust_remote_code,
                                 allow_pickle=args.allow_pickle_weights)
        prints.append(model_fingerprint(module))
        del module  # only its fingerprint was needed: a cached run keeps no teacher
    return prints


def check_cache_for_run(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                        trainer, task: str, data_hash: str | None = None) -> None:
    """Refuse, before any training, a ``--kd_teacher_cache`` produced for another run (any manifest field, too few
    steps for the KD stop) or holding a damaged shard of this rank (:class:`TeacherCacheError`, one line).
    ``data_hash``: as for :func:`stream_manifest`."""
    cache: TeacherCache = trainer.teacher_cache
    have = cache.manifest
    # The target fields (k, dtypes, targets kind) say what was stored, not which run it serves: taken as stored.
    cache_args = CacheArguments(top_k=have.top_k, sample_tokens=have.top_k if have.targets == "sampled" else 0,
                                logp_dtype=have.logp_dtype, steps_per_shard=have.steps_per_shard)
    stop = run_kd_stop_step(trainer)
    expected = stream_manifest(model_args, data_args, args, cache_args, task, trainer, stop,
                               fingerprints=expected_fingerprints(args, have, task), teacher_dtype=have.teacher_dtype,
                               data_hash=data_hash)
    cache.check_matches(expected, stop if args.kd_alpha > 0 else None)
    cache.verify([trainer.accelerator.process_index])
    logger.info("teacher cache %s matches this run (steps 0..%d cached, KD until step %d)", cache.folder,
                have.steps - 1, stop - 1)
