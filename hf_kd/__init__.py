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
    "chunked_distillation_loss": ".core.chunked_kd",
    "kd_is_active": ".core.schedule",
    "kd_weight": ".core.schedule",
    "resolve_kd_stop_step": ".core.schedule",
    "teacher_indices": ".core.schedule",
    "paper_speedup": ".core.curves",
    "frontier_speedup": ".core.curves",
    "DistillationTrainingArguments": ".text.config",
    "DistillationTrainer": ".text.trainer",
    "ResumableMLMCollator": ".text.data",
    "ModelArguments": ".text.script_args",
    "DataArguments": ".text.script_args",
    "ClmDataArguments": ".text.script_args",
    "run_pretraining": ".text.pretrain",
    "VisionDataArguments": ".vision.data",
    "VisionModelArguments": ".vision.setup",
    "VisionTrainingArguments": ".vision.setup",
    "run_vision_training": ".vision.loop",
}
__all__ = [  # kept literal for tools; tests/test_cli.py checks it equals _EXPORTS
    "ClmDataArguments",
    "CostCallback",
    "CostMeter",
    "DataArguments",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "ModelArguments",
    "ResumableMLMCollator",
    "VisionDataArguments",
    "VisionModelArguments",
    "VisionTrainingArguments",
    "chunked_distillation_loss",
    "distillation_loss",
    "frontier_speedup",
    "kd_is_active",
    "kd_weight",
    "paper_speedup",
    "resolve_kd_stop_step",
    "run_pretraining",
    "run_vision_training",
    "teacher_indices",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .core.callbacks import CostCallback
    from .core.chunked_kd import chunked_distillation_loss
    from .core.cost import CostMeter
    from .core.curves import frontier_speedup, paper_speedup
    from .core.losses import distillation_loss
    from .core.schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices
    from .text.config import DistillationTrainingArguments
    from .text.data import ResumableMLMCollator
    from .text.pretrain import run_pretraining
    from .text.script_args import ClmDataArguments, DataArguments, ModelArguments
    from .text.trainer import DistillationTrainer
    from .vision.data import VisionDataArguments
    from .vision.loop import run_vision_training
    from .vision.setup import VisionModelArguments, VisionTrainingArguments


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'hf_kd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
