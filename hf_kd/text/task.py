"""Which objective a text model is trained with (``"mlm"`` or ``"clm"``), and whether a teacher fits it.

The task is read from the student's class (``kd_task="auto"``); a teacher must be of the same task. A teacher
given by path is judged from its config *before* its weights load: transformers would happily load a BERT
masked-LM checkpoint as ``BertLMHeadModel`` for a causal-LM student (``is_decoder=False``: it sees the token it is
asked to predict), and a loaded module's class no longer says what the checkpoint was trained for.
"""

from __future__ import annotations

import torch

from ..core.teachers import TeacherLoadError

TASK_NAMES = {"mlm": "masked LM", "clm": "causal LM"}


def _mapping_classes(mapping) -> set[str]:
    out: set[str] = set()
    for v in mapping.values():
        out.update(v if isinstance(v, list | tuple) else [v])
    return out


def class_task(name: str) -> str | None:
    """``"mlm"``, ``"clm"`` or ``None`` (neither, or ambiguous) for a model class name."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    is_clm = name in _mapping_classes(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) or name.endswith("ForCausalLM")
    is_mlm = name in _mapping_classes(MODEL_FOR_MASKED_LM_MAPPING_NAMES) or name.endswith("ForMaskedLM")
    return None if is_clm == is_mlm else "clm" if is_clm else "mlm"


def model_task(model: torch.nn.Module) -> str | None:
    """``"mlm"``, ``"clm"`` or ``None`` (neither, or ambiguous) from the model class."""
    return class_task(type(getattr(model, "module", model)).__name__)


def resolve_kd_task(model: torch.nn.Module | None, requested: str = "auto") -> str:
    """The loss ``DistillationTrainer`` trains ``model`` with; a model it has no loss for is refused."""
    if requested != "auto":
        return requested
    if model is None:
        raise ValueError("DistillationTrainer got model=None: pass model=..., or with model_init set kd_task='mlm' or "
                         "'clm' (the loss is read from the model)")
    task = model_task(model)
    if task is None:
        name = type(getattr(model, "module", model)).__name__
        raise ValueError(
            f"DistillationTrainer has no loss for {name}: it supports masked LMs (*ForMaskedLM, e.g. BertForMaskedLM) "
            "and causal LMs (*ForCausalLM / GPT2LMHeadModel); pass such a model, or set kd_task='mlm'/'clm' if "
            f"{name} is one"
        )
    return task


def config_task(config) -> tuple[str | None, str]:
    """What a checkpoint's config says it was trained as: (``"mlm"``/``"clm"``/``None``, a description).

    ``architectures`` decides when it names one task; a model type that transformers also builds as a masked LM
    (BERT, RoBERTa, ...) is a causal LM only with ``is_decoder=True``, whatever head it was saved with.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "") or ""
    kinds = {class_task(a) for a in archs} - {None}
    what = f"{archs[0] if archs else model_type or 'an unknown model'} (model_type={model_type!r}"
    task = kinds.pop() if len(kinds) == 1 else None
    encoder_family = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder",
                                                                                     False)
    if encoder_family:
        decoder = bool(getattr(config, "is_decoder", False))
        what += f", is_decoder={decoder}"
        if task is None or (task == "clm" and not decoder):
            task = "clm" if decoder else "mlm"
    return task, what + ")"


def check_teacher_config(name: str, config, task: str) -> None:
    """Refuse, before loading its weights, a teacher checkpoint whose config is of another task than ``task``."""
    got, what = config_task(config)
    if got is not None and got != task:
        raise TeacherLoadError(f"teacher {name!r} is a {TASK_NAMES[got]} checkpoint, {what}, but the student is "
                               f"trained as a {TASK_NAMES[task]}; expected a {TASK_NAMES[task]} teacher")


def check_teachers_fit(task: str, teachers, names) -> None:
    """Every teacher is of the student's task (modules by class and config; paths were checked before loading).

    A teacher may be larger or of another family (its own hidden size and head): only its output vocabulary
    must be the student's, token for token (sizes: ``core.teachers.check_teacher_vocab``; token->id maps and
    special ids: ``core.teachers.check_teacher_tokenizers``, both called by the trainer).
    """
    for t, name in zip(teachers, names):
        got = model_task(t)
        if got is not None and got != task:
            raise ValueError(f"teacher {name!r} ({type(t).__name__}) is a {got.upper()} model but the student is "
                             f"trained as {task.upper()}; expected teachers of the student's task")
        config = getattr(getattr(t, "module", t), "config", None)
        if config is not None:  # e.g. BertLMHeadModel(is_decoder=False): a causal-LM class that sees every token
            check_teacher_config(name, config, task)
