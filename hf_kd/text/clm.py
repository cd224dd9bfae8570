"""Causal-LM pieces of ``DistillationTrainer``: task detection, next-token positions, final hidden states.

A causal LM's position ``i`` predicts token ``i + 1``. The loss positions are those whose *shifted* label is
not -100 and whose target is not padding (so completion-only data, with prompt labels set to -100, works);
``kd_positions="all"`` adds every position with a real next token (prompt tokens too) to the KD term.

The chunked loss (:mod:`hf_kd.core.chunked_kd`) needs the final hidden states at those positions and the LM
head weight, not logits. :class:`HiddenCapture` gets them without bypassing the model (and any DDP wrapper
around it): a forward pre-hook on the output-embedding module keeps ``hidden[mask]`` and hands the head an
empty slice, so the model's own ``[B, L, V]`` logits are never computed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..core.losses import IGNORE_INDEX
from .sparse_head import Rows, as_rows

# Configs whose logits are not ``head(hidden)``: the chunked loss would miss that step, so use full logits.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def _mapping_classes(mapping) -> set[str]:
    out: set[str] = set()
    for v in mapping.values():
        out.update(v if isinstance(v, list | tuple) else [v])
    return out


def model_task(model: torch.nn.Module) -> str | None:
    """``"mlm"``, ``"clm"`` or ``None`` (neither, or ambiguous) from the model class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    name = type(getattr(model, "module", model)).__name__
    is_clm = name in _mapping_classes(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) or name.endswith("ForCausalLM")
    is_mlm = name in _mapping_classes(MODEL_FOR_MASKED_LM_MAPPING_NAMES) or name.endswith("ForMaskedLM")
    return None if is_clm == is_mlm else "clm" if is_clm else "mlm"


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


def shifted(inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels and "the next token is real" mask, both ``[B, L]`` (last column: no next token)."""
    if inputs.get("shift_labels") is not None:  # padding-free collators provide them, padding already -100
        target = inputs["shift_labels"]
        return target, torch.ones_like(target, dtype=torch.bool)
    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    attn = inputs.get("attention_mask")
    real = torch.ones_like(target, dtype=torch.bool) if attn is None else F.pad(attn[:, 1:], (0, 1)).bool()
    return target, real


def _position_mask(inputs: dict, labels: torch.Tensor, all_positions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    target, real = shifted(inputs, labels)
    return (real if all_positions else real & (target != IGNORE_INDEX)), target


def loss_positions(inputs: dict, labels: torch.Tensor, all_positions: bool = False) -> tuple[Rows, torch.Tensor]:
    """``(rows, row_labels [M])``: the positions that carry a loss (:class:`Rows` of a ``[B, L]`` mask) and their
    next-token labels.

    Without ``all_positions`` the rows are the labelled next-token positions (CE and KD); with it, every
    position with a real next token (KD there; CE still only where the label is not -100).
    """
    mask, target = _position_mask(inputs, labels, all_positions)
    rows = Rows(mask)
    return rows, rows.take(target)


def count_positions(batch: dict, all_positions: bool = False) -> torch.Tensor:
    """Number of loss positions of one batch (``labels`` included), as a device tensor (no host sync)."""
    return _position_mask(batch, batch["labels"], all_positions)[0].sum()


def fused_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output-embedding module when logits are exactly ``head(final_hidden)``; else ``None`` (full logits)."""
    inner = getattr(model, "module", model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    cfg = getattr(inner, "config", None)
    if not isinstance(head, torch.nn.Linear) or any(getattr(cfg, k, None) not in (None, 1, 1.0)
                                                    for k in LOGIT_POSTPROCESSING):
        return None
    return head


class HiddenCapture:
    """While :meth:`rows` is active, the head's input is captured at ``mask`` and the head gets an empty slice.

    Usage::

        capture = HiddenCapture(head)
        with capture.rows(mask) as got:
            model(input_ids=..., attention_mask=...)       # the head computes [B, 0, V]
        hidden = got.hidden                                 # [M, H], with the model's graph
    """

    def __init__(self, head: torch.nn.Module):
        self.head = head
        self.hidden: torch.Tensor | None = None
        self._rows: Rows | None = None
        self._handle = head.register_forward_pre_hook(self._pre_hook)

    def _pre_hook(self, module, args):
        if self._rows is None:
            return None
        hidden = args[0]
        if hidden.shape[:2] != self._rows.mask.shape:
            raise RuntimeError(f"causal-LM head input {tuple(hidden.shape)} does not match the position mask "
                               f"{tuple(self._rows.mask.shape)}; set clm_chunk_size=0 (full logits) for this model")
        self.hidden = self._rows.take(hidden)
        return (hidden[:, :0],) + tuple(args[1:])

    @contextlib.contextmanager
    def rows(self, mask: torch.Tensor | Rows):
        self._rows, self.hidden = as_rows(mask), None
        try:
            yield self
        finally:
            self._rows = None

    def remove(self) -> None:
        self._handle.remove()


def chunked_ce_and_argmax(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          labels: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation: CE sum (float32) and argmax ids ``[M]`` from hidden states, a chunk of rows at a time."""
    ce = hidden.new_zeros((), dtype=torch.float32)
    preds = []
    for start in range(0, hidden.shape[0], chunk_size):
        z = F.linear(hidden[start:start + chunk_size], weight, bias).float()
        ce += F.cross_entropy(z, labels[start:start + chunk_size], ignore_index=IGNORE_INDEX, reduction="sum")
        preds.append(z.argmax(-1))
    return ce, torch.cat(preds) if preds else labels.new_zeros(0)


def check_teachers_fit(task: str, teachers, names) -> None:
    """Every teacher is of the student's task.

    A teacher may be larger or of another family (its own hidden size and head): only its output vocabulary
    must be the student's, token for token (sizes: ``core.teachers.check_teacher_vocab``; token->id maps and
    special ids: ``core.teachers.check_teacher_tokenizers``, both called by the trainer).
    """
    for t, name in zip(teachers, names):
        got = model_task(t)
        if got is not None and got != task:
            raise ValueError(f"teacher {name!r} ({type(t).__name__}) is a {got.upper()} model but the student is "
                             f"trained as {task.upper()}; expected teachers of the student's task")
