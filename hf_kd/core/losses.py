"""Pure loss functions for knowledge distillation (shared by the text trainer and the vision loop).

The objective (``docs/design.md``, Hinton et al. 2015; Blakeney et al. 2022, Sec. 3)::

    loss = (1 - alpha) * CE(s, y) + alpha * T**2 * D(t / T, s / T)     while KD is on
    loss = CE(s, y)                                                     after the stop step

Every term is a *sum* over its positions divided by a caller-supplied denominator (the number of those
positions in the whole optimizer step, over all micro-batches and ranks), so that the update does not
depend on how the global batch is split (gradient accumulation, data parallelism).

All softmax / log-softmax math runs in float32 even when the models run in bf16/fp16: the KL of two
nearly equal low-precision distributions is dominated by rounding otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl")


def teacher_log_probs(teacher_logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Log of the teachers' mean temperature-softened distribution (the ensemble ``"mean"`` target).

    Args:
        teacher_logits: one or more tensors of shape ``[N, V]`` (or any ``[..., V]``), same shape each.
        temperature: softmax temperature ``T > 0``.
    Returns:
        float32 tensor ``[..., V]``: ``log(mean_i softmax(t_i / T))``; for one teacher its log-softmax.
    """
    if len(teacher_logits) == 0:
        raise ValueError("teacher_log_probs needs at least one teacher's logits, got 0")
    # (at T = 1 no division: dividing would copy every [N, V] tensor for nothing)
    logps = [F.log_softmax(t.detach().float() / temperature if temperature != 1 else t.detach().float(), dim=-1)
             for t in teacher_logits]
    if len(logps) == 1:
        return logps[0]
    # log-mean-exp keeps the mixture exact in log space (no underflow for confident teachers).
    return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))


def kd_divergence_per_position(
    student_logits: torch.Tensor,
    teacher_logp: torch.Tensor,
    temperature: float,
    divergence: str = "forward_kl",
) -> torch.Tensor:
    """Per-position divergence between teacher and student softened distributions.

    Args:
        student_logits: ``[N, V]`` raw student logits (any dtype; promoted to float32).
        teacher_logp: ``[N, V]`` float32 teacher log-probabilities (from :func:`teacher_log_probs`).
        divergence: ``"forward_kl"`` = KL(teacher || student) (Hinton); ``"reverse_kl"`` = KL(student || teacher)
            (the argument order of the paper's released code).
    Returns:
        float32 ``[N]``, unscaled (no ``T**2``), non-negative.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"kd_divergence={divergence!r} is not supported; expected one of {DIVERGENCES}")
    return kd_from_log_probs(F.log_softmax(student_logits.float() / temperature, dim=-1), teacher_logp, divergence)


def kd_from_log_probs(s_logp: torch.Tensor, t_logp: torch.Tensor, divergence: str = "forward_kl") -> torch.Tensor:
    """Per-row KL from float32 log-probabilities ``[N, V]`` -> ``[N]``.

    ``F.kl_div(input, target, log_target=True)`` computes ``exp(target) * (target - input)`` in one fused
    kernel: at vocabulary width the KD loss is memory-bound, and separate exp/sub/mul passes cost ~10% of a
    tiny model's step (measured in ``benchmarks/kd_overhead.py``).
    """
    if divergence == "forward_kl":
        return F.kl_div(s_logp, t_logp, reduction="none", log_target=True).sum(-1)
    if divergence == "reverse_kl":
        return F.kl_div(t_logp, s_logp, reduction="none", log_target=True).sum(-1)
    raise ValueError(f"kd_divergence={divergence!r} is not supported; expected one of {DIVERGENCES}")


def ce_sum(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum of the cross-entropy over positions whose label is not -100.

    Args:
        logits: ``[..., V]``; labels: ``[...]`` int64 with -100 for positions that carry no loss.
        label_smoothing: forwarded to ``F.cross_entropy`` (0 = hard labels; ImageNet recipes use 0.1).
    Returns:
        float32 scalar (0 when no position carries a label, with a graph so ``backward`` still works).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


@dataclass
class DistillationLoss:
    """Result of :func:`distillation_loss`. ``ce`` and ``kd`` are the *unweighted* normalised terms
    (detached, for logging); ``loss`` is the weighted total to back-propagate."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor | None


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    kd_mask: torch.Tensor | None = None,
    *,
    alpha: float,
    temperature: float,
    divergence: str = "forward_kl",
    ce_denominator: float | torch.Tensor,
    kd_denominator: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> DistillationLoss:
    """``(1 - alpha) * CE + alpha * T**2 * D`` with each term a sum divided by its step-level count.

    Args:
        student_logits: ``[N, V]`` (or ``[B, L, V]``; flattened).
        labels: ``[N]`` (or ``[B, L]``), -100 where no CE is taken.
        teacher_logits: ``None`` (no KD: plain CE, weight 1) or a list of ``[K, V]`` tensors *already at the
            KD positions* (the rows where ``kd_mask`` is true; all ``N`` rows when it is ``None``) -- a teacher
            computes only the rows it is asked for. Several teachers are averaged in probability space.
        kd_mask: ``[N]`` bool selecting the student rows that carry KD; ``None`` means every row.
        ce_denominator: number of labelled positions in the whole optimizer step (all micro-batches/ranks).
        kd_denominator: number of KD positions in the whole optimizer step; defaults to ``ce_denominator``.
        label_smoothing: smoothing of the hard-label CE term only (the KD target is the teacher's distribution).
    """
    v = student_logits.shape[-1]
    student_logits = student_logits.reshape(-1, v)
    labels = labels.reshape(-1)
    if not teacher_logits:
        ce = ce_sum(student_logits, labels, label_smoothing=label_smoothing) / ce_denominator
        return DistillationLoss(loss=ce, ce=ce.detach(), kd=None)

    teacher_logits = [t.reshape(-1, t.shape[-1]) for t in teacher_logits]
    kd_logits = student_logits if kd_mask is None else student_logits[kd_mask.reshape(-1)]
    s_logp = F.log_softmax(kd_logits.float() / temperature, dim=-1)
    if kd_mask is None and temperature == 1.0 and label_smoothing == 0.0:
        # Same rows, same softmax: reuse it for the CE instead of a second vocabulary-wide log-softmax.
        ce_total = F.nll_loss(s_logp, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        ce_total = ce_sum(student_logits, labels, label_smoothing=label_smoothing)
    ce = ce_total / ce_denominator
    t_logp = teacher_log_probs(teacher_logits, temperature)
    kd_sum = kd_from_log_probs(s_logp, t_logp, divergence).sum()
    kd = kd_sum / (ce_denominator if kd_denominator is None else kd_denominator)
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kd
    return DistillationLoss(loss=loss, ce=ce.detach(), kd=kd.detach())
