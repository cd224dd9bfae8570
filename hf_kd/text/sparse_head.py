"""Run an MLM head only at the positions that carry a loss (a cheaper step for baseline and KD alike).

The MLM loss needs the vocabulary projection only at the ~15% masked positions; for a tiny BERT the head
(hidden x 30k vocab) costs ~10x two encoder layers per token, for BERT-base ~20% of the step. Instead of
calling the encoder and head separately (which would bypass DDP/DeepSpeed wrappers and their gradient
hooks), a forward pre-hook on the head module swaps its input ``[B, L, H]`` for the selected rows
``[M, H]`` while a selection is active: the model is still called as a whole, through any wrapper, and
returns logits ``[M, V]`` in row-major order of the mask. Heads made of token-wise ops (BERT's ``cls``,
RoBERTa's ``lm_head``, ALBERT's ``predictions``) give exactly the rows of the full computation.
Models whose head is not one such module fall back to the full forward.
"""

from __future__ import annotations

import contextlib

import torch

from .rows import Rows, as_rows

# Attribute names of token-wise MLM heads that take the encoder's last hidden state as their only input.
HEAD_ATTRIBUTES = ("cls", "lm_head", "predictions")


def find_mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The head module of a BERT-family MLM model, or ``None`` when it cannot be separated."""
    inner = getattr(model, "module", model)  # DDP / DeepSpeed engines keep the model in .module
    for name in HEAD_ATTRIBUTES:
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


class SparseHead:
    """Forward pre-hook that makes ``head`` compute only the rows where ``mask`` is true.

    Usage::

        sparse = SparseHead.attach(model)           # None when the model's head cannot be separated
        with sparse.select(labels != -100):
            logits = model(input_ids=..., attention_mask=...).logits   # [M, V]
    """

    def __init__(self, head: torch.nn.Module):
        self.head = head
        self._rows: Rows | None = None
        self._handle = head.register_forward_pre_hook(self._pre_hook)

    @classmethod
    def attach(cls, model: torch.nn.Module) -> SparseHead | None:
        head = find_mlm_head(model)
        return cls(head) if head is not None else None

    def _pre_hook(self, module, args):
        if self._rows is None:
            return None
        hidden = args[0]
        if hidden.shape[:2] != self._rows.mask.shape:
            raise RuntimeError(
                f"sparse head: hidden states {tuple(hidden.shape)} do not match the position mask "
                f"{tuple(self._rows.mask.shape)}; run with --sparse_mlm_head false for this model"
            )
        return (self._rows.take(hidden),) + tuple(args[1:])

    @contextlib.contextmanager
    def select(self, mask: torch.Tensor | Rows | None):
        """Within the block, the head sees only ``hidden[mask]`` (``mask`` ``[B, L]`` bool or :class:`Rows`;
        ``None`` = all)."""
        self._rows = as_rows(mask)
        try:
            yield
        finally:
            self._rows = None

    def remove(self) -> None:
        self._handle.remove()
