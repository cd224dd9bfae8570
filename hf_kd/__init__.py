"""hf-kd: knowledge distillation that makes Hugging Face *training* cheaper (Blakeney et al. 2022)."""

from .core.callbacks import CostCallback
from .core.cost import CostMeter
from .core.losses import distillation_loss
from .core.schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices
from .text.config import DistillationTrainingArguments
from .text.trainer import DistillationTrainer

__version__ = "0.1.0"
__all__ = [
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
