"""Teacher placement per distributed engine -- the one place that knows about DDP / DeepSpeed / FSDP.

The student goes through ``accelerator.prepare`` as usual; the teachers never do (they have no optimizer
and must not join gradient synchronisation). :func:`prepare_teachers` decides, per engine:

| engine | what happens to the teacher | teacher memory per device |
|---|---|---|
| single device, DDP (``MULTI_GPU``/``MULTI_CPU``) | replicated: moved to this rank's device in ``teacher_dtype``, never wrapped (no gradient sync, no buckets) | whole teacher |
| DeepSpeed ZeRO-0/1/2 | replicated like DDP, in ``teacher_dtype`` (``auto`` = bf16 under ``--bf16``) | whole teacher |
| DeepSpeed ZeRO-3 | partitioned: wrapped in its *own* inference-only DeepSpeed engine (``deepspeed.initialize`` with the student's stage-3 settings, no optimizer, so DeepSpeed builds a ``DeepSpeedZeRoOffload``); parameters are gathered layer by layer during its forward, so a teacher larger than one device works; ``offload_param`` is honoured | 1/N of the teacher + one gathered layer |
| FSDP (accelerate plugin) | replicated on each device, like DDP (the teacher is small next to the student's sharded optimizer state; shard it with ZeRO-3 when it is not) | whole teacher |

ZeRO-3 rule: gathering a partitioned parameter is a collective, so every rank must run the *same* teachers'
forwards on *every* KD step. That holds by construction -- the KD cutoff depends only on the global step and
``kd_teacher_selection="sample"`` is a pure function of (seed, step) (:mod:`hf_kd.core.schedule`) -- and the
distributed tests check it per rank. Teachers loaded by path while a stage-3 ``HfDeepSpeedConfig`` is alive
(``--deepspeed zero3.json``) are already built partitioned by ``from_pretrained`` (``deepspeed.zero.Init``),
so they never materialise whole on one device.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Keys of a DeepSpeed config that only matter when training (the teacher engine has no optimizer).
_TRAINING_ONLY_KEYS = ("optimizer", "scheduler", "gradient_clipping", "zero_allow_untested_optimizer")


def engine_name(accelerator) -> str:
    """``"deepspeed-zero<N>"``, ``"fsdp"``, ``"ddp"`` or ``"single"`` for ``accelerator``'s distributed setup."""
    from accelerate.utils import DistributedType

    dtype = accelerator.distributed_type
    if dtype == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{deepspeed_stage(accelerator)}"
    if dtype == DistributedType.FSDP:
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def deepspeed_stage(accelerator) -> int:
    """The ZeRO stage of the student's DeepSpeed config (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def prepare_teachers(teachers: Sequence[torch.nn.Module], accelerator, args, dtype: torch.dtype | None
                     ) -> list[torch.nn.Module]:
    """Place each teacher for the engine ``accelerator`` runs (table above); returns the modules to call.

    A returned ZeRO-3 teacher is a ``DeepSpeedEngine``; its model is ``.module`` (which
    :func:`hf_kd.text.sparse_head.find_mlm_head` looks through) and calling it runs the partitioned forward.
    """
    engine = engine_name(accelerator)
    if engine == "deepspeed-zero3":
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        prepared = [zero3_teacher(t, config, dtype) for t in teachers]
    else:
        prepared = []
        for t in teachers:
            t.to(device=args.device, dtype=dtype)
            prepared.append(t)
    if teachers:
        logger.info("%d teacher(s) prepared for %s (%s)", len(teachers), engine,
                    "partitioned" if engine == "deepspeed-zero3" else "replicated")
    return prepared


def zero3_teacher(teacher: torch.nn.Module, student_config: dict[str, Any], dtype: torch.dtype | None):
    """Wrap ``teacher`` in an inference-only DeepSpeed ZeRO-3 engine (partitioned over the ranks).

    The same approach as TRL's ``prepare_deepspeed`` for reference models: ``deepspeed.initialize`` with the
    student's stage-3 settings and no optimizer, so DeepSpeed installs only the parameter partitioning /
    gathering hooks. Collective: every rank must call it, in the same order.
    """
    import deepspeed

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)  # before partitioning, so no gradient partitions are reserved
    config = teacher_zero3_config(student_config, _hidden_size(teacher), dtype)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def release_zero3_teacher(engine) -> None:
    """Destroy a teacher's ZeRO-3 engine (:func:`zero3_teacher`) so that it and its module can be freed.

    ``engine.destroy()`` alone is not enough: every ZeRO-3 engine pushes its top module onto DeepSpeed's
    module-level ``parameter_offload.FWD_MODULE_STACK`` when it is built and never pops it, and that module's
    forward hooks hold the engine -- so teacher module and engine would stay alive for the rest of the process.
    Only this teacher's entry is removed: the student's engine still needs its own. Likewise the parameter
    coordinator memoises which parameters to release per ``(coordinator, submodule, step)`` in a class-level
    ``functools.lru_cache``, which holds every teacher submodule (and through its hooks the engine); that cache
    is cleared -- the student's entries are recomputed from its trace on its next step.
    """
    engine.destroy()
    module = getattr(engine, "module", None)
    try:
        from deepspeed.runtime.zero import parameter_offload, partitioned_param_coordinator
    except ImportError:  # pragma: no cover - an engine exists, so DeepSpeed is installed
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list) and module is not None:
        stack[:] = [m for m in stack if m is not module]
    coordinator = getattr(partitioned_param_coordinator, "PartitionedParameterCoordinator", None)
    memo = vars(coordinator).get("_PartitionedParameterCoordinator__params_to_release") if coordinator else None
    # The lru_cache sits inside DeepSpeed's NVTX wrapper (no functools.wraps): look in the wrapper's closure.
    for candidate in (memo, *(c.cell_contents for c in (getattr(memo, "__closure__", None) or ()))):
        if hasattr(candidate, "cache_clear"):
            candidate.cache_clear()
            break


def teacher_zero3_config(student_config: dict[str, Any], hidden_size: int | None, dtype: torch.dtype | None
                         ) -> dict[str, Any]:
    """The teacher engine's config: the student's stage-3 settings without optimizer or "auto" values.

    Precision follows ``teacher_dtype`` (the engine casts the module: bf16/fp16 enabled or neither).
    Bucket sizes left "auto" are sized from the teacher's hidden size the way transformers sizes the
    student's; any other "auto" (the Trainer fills those only for the student, at train time) is dropped so
    DeepSpeed's default applies.
    """
    config = copy.deepcopy(student_config)
    for key in _TRAINING_ONLY_KEYS:
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    zero.pop("offload_optimizer", None)  # nothing to offload without an optimizer
    if hidden_size:
        sizes = {"reduce_bucket_size": hidden_size * hidden_size,
                 "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                 "stage3_param_persistence_threshold": 10 * hidden_size}
        for key, value in sizes.items():
            if zero.get(key) == "auto":
                zero[key] = value
    config["bf16"] = {"enabled": dtype == torch.bfloat16}
    config["fp16"] = {"enabled": dtype == torch.float16}
    return _drop_auto(config)


def _drop_auto(value: Any) -> Any:
    """``value`` without dict entries whose value is the string "auto" (recursively)."""
    if isinstance(value, dict):
        return {k: _drop_auto(v) for k, v in value.items() if v != "auto"}
    return value


def _hidden_size(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    sizes = getattr(cfg, "hidden_sizes", None)
    if sizes:
        return int(max(sizes))
    size = getattr(cfg, "hidden_size", None)
    return int(size) if size else None
