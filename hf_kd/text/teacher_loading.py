"""Teachers as the trainer is given them (a model, a folder or Hub id, or a list) -> modules on the host.

A teacher given by path is checked to be a checkpoint of the student's objective from its config before its
weights load (``hf_kd.text.task.check_teacher_config``), then loaded safely (``hf_kd.core.teachers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from ..core.teachers import load_pretrained
from .config import DistillationTrainingArguments
from .task import check_teacher_config

TeacherSpec = torch.nn.Module | str | Sequence[torch.nn.Module | str] | None
TEACHER_AUTO_CLASS = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM}


def teacher_dtype(args: DistillationTrainingArguments) -> torch.dtype:
    # Never None: transformers 5.x reads dtype=None as "the checkpoint's saved dtype" (a bf16 teacher in an fp32 run).
    if args.teacher_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    return getattr(torch, args.teacher_dtype)


def teacher_items(spec: TeacherSpec, args: DistillationTrainingArguments) -> list[torch.nn.Module | str]:
    """The teachers asked for, as a list (``None``: ``args.teacher_model_name_or_path``)."""
    if spec is None:
        spec = args.teacher_model_name_or_path or []
    return [spec] if isinstance(spec, torch.nn.Module | str) else list(spec)


def load_teachers(spec: TeacherSpec, args: DistillationTrainingArguments,
                  task: str = "mlm") -> tuple[list[torch.nn.Module], list[str]]:
    """Models, paths or Hub ids (or a list of them) -> teacher modules (on the host) and their display names.

    A teacher given by path is checked to be a ``task`` checkpoint from its config before its weights load.
    """
    from transformers import AutoConfig

    teachers, names = [], []
    for item in teacher_items(spec, args):
        if isinstance(item, str):
            if Path(item).is_dir() and (Path(item) / "config.json").is_file():
                try:
                    config = AutoConfig.from_pretrained(item, trust_remote_code=args.teacher_trust_remote_code)
                except (OSError, ValueError):
                    config = None  # unreadable or remote code: load_pretrained below says why, in one line
                if config is not None:
                    check_teacher_config(item, config, task)
            model = load_pretrained(item, TEACHER_AUTO_CLASS[task], dtype=teacher_dtype(args),
                                    trust_remote_code=args.teacher_trust_remote_code,
                                    allow_pickle=args.allow_pickle_weights)
            teachers.append(model)
            names.append(item)
        else:
            teachers.append(item)
            names.append(getattr(getattr(item, "config", None), "_name_or_path", "") or type(item).__name__)
    return teachers, names
