"""Where the teacher side of the KD term comes from: one seam between the objectives and the teachers.

An objective asks a :class:`TeacherSource` for the targets of the teachers selected at a step, at the rows that
carry KD; it never calls a teacher itself. :class:`LiveTeachers` runs the teachers (the only source today); a
source that replays stored teacher outputs fits the same protocol. A target is either the teacher's logits at
the rows (``[M, V]``) or, for the chunked causal-LM loss, its final hidden states there with its head
(``(hidden [M, Ht], weight [V, Ht], bias)``: :data:`hf_kd.core.chunked_kd.TeacherHead`); the chunked loss
accepts both.
"""

from __future__ import annotations

import gc
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..core.chunked_kd import TeacherTarget
from ..core.distributed import release_zero3_teacher
from ..core.schedule import teacher_indices
from .rows import Rows

logger = logging.getLogger(__name__)

# How one model's output at the rows is read: (model, model inputs, rows) -> its target there.
RowReader = Callable[[torch.nn.Module, dict, Rows], TeacherTarget]
TEACHER_CALLS_KEPT = 4096  # recent (step, teacher) pairs kept for audits; the total is the cost meter's count


def full_logits(model: torch.nn.Module, inputs: dict, rows: Rows) -> torch.Tensor:
    """The model's own logits at ``rows`` (the reference every faster reader must equal)."""
    return rows.take(model(**inputs).logits)


def teacher_forward_context(deepspeed: bool):
    """``inference_mode`` skips all autograd bookkeeping (teacher forward ~15% faster than under ``no_grad`` on CPU,
    benchmarks/kd_overhead.py); ZeRO-3's gather hooks write into parameters, which it forbids -> ``no_grad``."""
    return torch.no_grad() if deepspeed else torch.inference_mode()


class TeacherSource(Protocol):
    """The teacher side of the KD term."""

    def targets(self, inputs: dict, rows: Rows, step: int) -> list[TeacherTarget]:
        """One target per teacher selected at optimizer ``step`` (``kd_teacher_selection``), at ``rows``."""
        ...

    def release(self) -> None:
        """KD is over for this run: free whatever the source holds on the training device."""
        ...


class LiveTeachers:
    """Targets computed by running the teachers; ``release`` frees them for the rest of the run.

    Args:
        modules: the teachers as they are called (a ZeRO-3 teacher is its DeepSpeed engine).
        readers: one :data:`RowReader` per teacher.
        selection, seed: ``kd_teacher_selection`` and the run's seed (:func:`hf_kd.core.schedule.teacher_indices`).
        deepspeed: whether the run uses DeepSpeed (picks the forward context).
        on_release: called once after the teachers are dropped (e.g. to clear activations captured by hooks).
    """

    def __init__(self, modules: Sequence[torch.nn.Module], readers: Sequence[RowReader], selection: str, seed: int,
                 deepspeed: bool, on_release: Callable[[], None] | None = None):
        self.modules = list(modules)
        self.readers = list(readers)
        self.selection, self.seed, self.deepspeed = selection, seed, deepspeed
        self.calls: deque[tuple[int, int]] = deque(maxlen=TEACHER_CALLS_KEPT)
        self.released = False
        self._count = len(self.modules)
        self._on_release = on_release

    def __len__(self) -> int:
        return self._count

    def targets(self, inputs: dict, rows: Rows, step: int) -> list[TeacherTarget]:
        if self.released:
            raise RuntimeError(f"teacher targets asked for at step {step}, after the teachers were released")
        out = []
        with teacher_forward_context(self.deepspeed):
            for i in teacher_indices(step, self._count, self.selection, self.seed):
                self.calls.append((step, i))
                out.append(self.readers[i](self.modules[i], inputs, rows))
        return out

    def release(self) -> None:
        """Drop every reference this source holds to the teachers, so they and their device memory are freed.

        A ZeRO-3 teacher's engine is destroyed (its partitions and gather hooks go with it). A teacher module
        the caller still holds stays alive in the caller's hands: it is moved to host memory, so nothing of it
        remains on the training device.
        """
        if self.released:
            return
        on_accel = any(p.device.type not in ("cpu", "meta") for t in self.modules for p in t.parameters())
        for t in self.modules:
            if callable(getattr(t, "destroy", None)):  # a ZeRO-3 teacher's DeepSpeed engine
                release_zero3_teacher(t)
            elif on_accel:
                t.to("cpu")
        self.modules.clear()
        self.readers.clear()
        if self._on_release is not None:
            self._on_release()
        self.released = True
        gc.collect()
        if on_accel and torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("KD stopped: %d teacher(s) freed from the training device", self._count)
