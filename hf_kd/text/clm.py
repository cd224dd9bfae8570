"""Causal-LM pieces of ``DistillationTrainer``: next-token positions, the fused head, final hidden states.

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
from .rows import Rows, as_rows

# Rows of one sequence compared when checking a fused head against the model's own logits (once per model).
HEAD_CHECK_POSITIONS = 4


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
    """The output-embedding module when it is a plain ``Linear`` (a candidate for the chunked loss), else ``None``.

    Whether the model's logits really are ``head(final_hidden)`` is not read from its config -- an allow-list of
    fields cannot know every architecture's ``forward`` -- but checked on data: :func:`head_differs`.
    """
    inner = getattr(model, "module", model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head if isinstance(head, torch.nn.Linear) else None


def head_differs(model: torch.nn.Module, capture: HiddenCapture, inputs: dict,
                 positions: int = HEAD_CHECK_POSITIONS) -> str | None:
    """``None`` when ``model``'s logits equal its head applied to the head's input on the first sequence of
    ``inputs`` (at ``positions`` spread-out rows); else why not, in words.

    Run in eval mode under ``no_grad`` (no dropout, so no random numbers are drawn: training is unchanged).
    """
    batch = inputs["input_ids"].shape[0]
    first = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch else v
             for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture.observe() as got:
            # .forward, not __call__: the model's own hooks (teacher timing and counting) must not see a check
            logits = model.forward(**first).logits
    finally:
        model.train(was_training)
    hidden, got.hidden = got.hidden, None
    length = logits.shape[1]
    idx = torch.linspace(0, length - 1, min(positions, length), device=logits.device).long()
    with torch.no_grad():
        ref = logits[0].index_select(0, idx).float()
        fused = F.linear(hidden[0].index_select(0, idx), capture.head.weight, capture.head.bias).float()
        err, scale = (ref - fused).abs().max(), ref.abs().max()
        bad = bool(err > 1e-3 * (1 + scale))  # once per model: the one host read of the check
    if not bad:
        return None
    return (f"{type(model).__name__}'s logits are not its output layer applied to its last hidden states (they "
            f"differ by up to {float(err):.3g}: post-processed in its forward)")


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
        self._observing = False
        self._handle = head.register_forward_pre_hook(self._pre_hook)

    def _pre_hook(self, module, args):
        if self._observing:  # keep the whole input; the head runs as usual
            self.hidden = args[0]
            return None
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

    @contextlib.contextmanager
    def observe(self):
        """Within the block the head's whole input is kept in ``hidden`` and the head computes as usual."""
        self._observing, self.hidden = True, None
        try:
            yield self
        finally:
            self._observing = False

    def remove(self) -> None:
        self._handle.remove()
        self.hidden = None


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
