"""hf-kd: knowledge distillation that makes Hugging Face *training* cheaper (Blakeney et al. 2022).

Definitions (objective, normalisation, stop step, cost keys, speed-ups, run files): ``docs/design.md``.
The names below are imported on first use, so ``import hf_kd`` (and ``hf-kd --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CostCallback": ".core.callbacks",
    "CostMeter": ".core.cost",
    "distillation_loss": ".core.losses",
    "kd_is_active": ".core.schedule",
    "kd_weight": ".core.schedule",
    "resolve_kd_stop_step": ".core.schedule",
    "teacher_indices": ".core.schedule",
    "DistillationTrainingArguments": ".text.config",
    "DistillationTrainer": ".text.trainer",
}
__all__ = [  # kept literal for tools; tests/test_cli.py checks it equals _EXPORTS
    "CostCallback",
    "CostMeter",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "distillation_loss",
    "kd_is_active",
    "kd_weight",
    "resolve_kd_stop_step",
    "teacher_indices",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .core.callbacks import CostCallback
    from .core.cost import CostMeter
    from .core.losses import distillation_loss
    from .core.schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices
    from .text.config import DistillationTrainingArguments
    from .text.trainer import DistillationTrainer


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'hf_kd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
