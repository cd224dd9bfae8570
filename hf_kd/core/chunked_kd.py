"""Fused LM head + CE + KD, computed a chunk of positions at a time.

For a causal LM the KD step is dominated by the vocabulary: the student's ``[N, V]`` logits, their
log-softmax, the teacher's ``[N, V]`` logits and their log-softmax, and the gradient of each, for every
position. :func:`chunked_distillation_loss` takes the *final hidden states* (``[N, H]``, already restricted
to the loss positions) and the LM head weight instead of logits, and for each chunk of ``chunk_size``
positions computes the student logits, the teacher's target (its hidden states times its head, under
``inference_mode``), the loss, and -- already in the forward pass -- the gradient w.r.t. the hidden states
and the head weight/bias. Backward only scales the stored gradients by ``grad_output``. So neither model's
``[N, V]`` logits ever exist in full: peak extra memory is a few ``[chunk_size, V]`` float32 buffers.

:func:`logits_distillation_loss` applies the same per-chunk math to student logits that already exist (one chunk:
an MLM's masked rows under the sparse head), so CE and KD share one log-softmax and autograd keeps no ``[N, V]``
intermediates.

The result is exact: the same objective, conventions and float32 softmax as
:func:`hf_kd.core.losses.distillation_loss` on the full logits (``tests/core/test_chunked_kd.py`` checks loss and
gradients). Gradients w.r.t. the analytic forms (``z`` = student logits, ``p = softmax(z / T)``,
``q`` = the teacher target)::

    CE:          d/dz  sum_i CE(z_i, y_i)                 = softmax(z) - onehot(y)   (rows with y != -100)
    forward KL:  d/dz  T^2 * KL(q || p)                   = T * (p - q)
    reverse KL:  d/dz  T^2 * KL(p || q)                   = T * p * (log p - log q - KL(p || q))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .losses import DIVERGENCES, IGNORE_INDEX, DistillationLoss, distillation_loss, teacher_log_probs
from .sparse_kd import SparseTargets, sparse_kd_parts

# float32 elements per [chunk, V] buffer: 2**22 = 16 MB, a handful of which are alive at once.
DEFAULT_CHUNK_ELEMENTS = 2**22

TeacherHead = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (hidden [N, Ht], weight [V, Ht], bias [V])
# A teacher's logits [N, V] at the rows, its TeacherHead, or its stored sparse targets there (a teacher cache).
TeacherTarget = torch.Tensor | TeacherHead | SparseTargets


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one float32 ``[chunk, V]`` buffer holds about 16 MB."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def _chunk_grad_logits(z, labels, t_logits, temperature, divergence, ce_scale, kd_scale, missing_mass="rest"):
    """Loss sums and d(loss)/dz of one chunk. Returns (ce_sum, kd_sum or None, grad_z float32 [C, V]).

    Written for few passes over the ``[C, V]`` buffers (the step is memory-bound there): in-place ops, the
    temperature-1 log-softmax shared by CE and KD, and the forward-KL sum as one dot product.
    """
    valid = labels != IGNORE_INDEX
    logp = F.log_softmax(z, dim=-1)  # temperature 1: the CE's (and the KD's when T == 1)
    ce_sum = F.nll_loss(logp, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    ce_row = (valid * ce_scale).unsqueeze(1)  # [C, 1]; rows without a label carry no CE gradient
    kd_sum = None
    if t_logits is None:
        grad = logp.exp_().mul_(ce_row)
    elif isinstance(t_logits[0], SparseTargets):
        # Stored targets: d/dz = ce_row * (softmax(z) - onehot) + kd_scale * (p_T - q~), with q~ = beta * p_T off
        # the ids and `on` at them (sparse_kd_parts): one pass over [C, V] plus a k-wide scatter.
        t = t_logits[0]
        s_logp = logp if temperature == 1.0 else F.log_softmax(z / temperature, dim=-1)
        kd_rows, beta, on = sparse_kd_parts(s_logp, t, missing_mass)
        kd_sum = kd_rows.sum()
        ids = t.ids.long()
        p_at = s_logp.gather(-1, ids).exp_()
        fix = (beta.unsqueeze(1) * p_at - on).mul_(kd_scale)  # at the ids: from beta * p to the stored target
        off = (1.0 - beta).mul_(kd_scale).unsqueeze(1)
        if temperature == 1.0:
            grad = logp.exp_().mul_(ce_row + off)
        else:
            grad = logp.exp_().mul_(ce_row).add_(s_logp.exp_().mul_(off))
        grad.scatter_add_(1, ids, fix)
    elif divergence == "forward_kl":
        # d/dz = ce_row * (softmax(z) - onehot) + kd_scale * (p_T - q)
        t_logp = teacher_log_probs(t_logits, temperature)
        q = t_logp.exp()
        s_logp = logp if temperature == 1.0 else F.log_softmax(z / temperature, dim=-1)
        kd_sum = torch.dot(q.view(-1), t_logp.sub_(s_logp).view(-1))  # sum q * (log q - log p)
        if temperature == 1.0:
            grad = logp.exp_().mul_(ce_row + kd_scale).addcmul_(q, -kd_scale)
        else:
            grad = logp.exp_().mul_(ce_row).add_(s_logp.exp_().sub_(q).mul_(kd_scale))
    else:
        # d/dz = ce_row * (softmax(z) - onehot) + kd_scale * p_T * (log p_T - log q - KL_row)
        t_logp = teacher_log_probs(t_logits, temperature)
        s_logp = logp.clone() if temperature == 1.0 else F.log_softmax(z / temperature, dim=-1)
        p = s_logp.exp()
        diff = s_logp.sub_(t_logp)  # log p - log q
        kl_row = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1)
        kd_sum = kl_row.sum()
        grad = logp.exp_().mul_(ce_row).add_(diff.sub_(kl_row.unsqueeze(1)).mul_(p).mul_(kd_scale))
    # - onehot(y) on labelled rows; a scatter, not boolean indexing (which would sync a GPU with the host)
    grad.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), -ce_row)
    return ce_sum, kd_sum, grad


def _chunk_target(teacher: TeacherTarget, start: int, chunk_size: int) -> torch.Tensor:
    """A teacher's logits for rows ``start:start + chunk_size``: given, or from its hidden states and head."""
    if isinstance(teacher, torch.Tensor):
        return teacher[start:start + chunk_size]
    if isinstance(teacher, SparseTargets):
        sl = slice(start, start + chunk_size)
        return SparseTargets(teacher.ids[sl], teacher.logp[sl], teacher.log_rest[sl])
    th, tw, tb = teacher
    return F.linear(th[start:start + chunk_size], tw, tb)


class _ChunkedLinearKD(torch.autograd.Function):
    """Loss, and its gradients computed chunk by chunk in forward; backward scales them by ``grad_output``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ce_den, kd_den, alpha, temperature, divergence, chunk_size,
                teachers, grad_enabled, missing_mass):
        n = hidden.shape[0]
        has_kd = bool(teachers)
        ce_w = (1.0 - alpha) if has_kd else 1.0  # no teacher: plain CE with weight 1, as distillation_loss
        ce_scale = ce_w / ce_den.float()
        kd_scale = alpha * temperature / kd_den.float()  # alpha * T^2 * (1/T from d(z/T)/dz) / count
        # needs_input_grad is True under no_grad too: an evaluation call must not pay for gradients.
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        need_b = grad_enabled and bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        ce_total = hidden.new_zeros((), dtype=torch.float32)
        kd_total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk_size):
            h = hidden[start:start + chunk_size]
            z = F.linear(h, weight, bias).float()
            t_logits = None
            if has_kd:
                with torch.inference_mode():
                    t_logits = [_chunk_target(t, start, chunk_size) for t in teachers]
            ce_c, kd_c, g = _chunk_grad_logits(z, labels[start:start + chunk_size], t_logits, temperature, divergence,
                                               ce_scale, kd_scale, missing_mass)
            ce_total += ce_c
            if kd_c is not None:
                kd_total += kd_c
            g_low = g.to(hidden.dtype)
            if need_h:
                grad_h[start:start + chunk_size] = g_low @ weight
            if need_w:  # low-precision matmul per chunk (as autograd would), summed over chunks in float32
                if weight.dtype == torch.float32:
                    grad_w.addmm_(g_low.t(), h)
                else:
                    grad_w += (g_low.t() @ h).float()
            if need_b:
                grad_b += g.sum(0)
        ce = ce_total / ce_den
        kd = kd_total / kd_den
        loss = ce_w * ce + (alpha * temperature**2 * kd if has_kd else 0.0)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None,
                              grad_b.to(bias.dtype) if need_b else None)
        ctx.mark_non_differentiable(ce, kd)
        return loss, ce, kd

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_loss
        out = [None if g is None else g * scale.to(g.dtype) for g in (grad_h, grad_w, grad_b)]
        return (*out, None, None, None, None, None, None, None, None, None, None)


def chunked_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    teachers: Sequence[TeacherTarget] | None = None,
    *,
    alpha: float,
    temperature: float,
    divergence: str = "forward_kl",
    ce_denominator: float | torch.Tensor,
    kd_denominator: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    missing_mass: str = "rest",
) -> DistillationLoss:
    """``(1 - alpha) * CE + alpha * T**2 * D`` from hidden states and head weights, never holding ``[N, V]`` logits.

    Equal to ``distillation_loss(hidden @ weight.T + bias, labels, [th @ tw.T + tb for ...], alpha=...,
    temperature=..., divergence=..., ce_denominator=..., kd_denominator=...)`` (KD over every row given).

    Args:
        hidden: ``[N, H]`` student final hidden states at the loss positions (any float dtype, with a graph).
        weight: ``[V, H]`` student LM head weight; ``bias``: ``[V]`` or ``None``.
        labels: ``[N]`` int64 target ids, -100 where no CE is taken (those rows still carry KD).
        teachers: ``None``/empty (no KD: plain CE, weight 1) or, per teacher, its logits ``[N, V]`` or
            ``(hidden [N, Ht], weight [V, Ht], bias)``, the same ``N`` rows; several are averaged in probability
            space (ensemble ``"mean"``).
        ce_denominator / kd_denominator: step-level counts the sums are divided by (kd defaults to ce).
        chunk_size: rows per chunk; default :func:`default_chunk_size` of the vocabulary.
        missing_mass: how stored :class:`~hf_kd.core.sparse_kd.SparseTargets` (one target, forward KL only) treat
            the teacher mass outside their ids (:func:`hf_kd.core.sparse_kd.sparse_kd_per_row`).
    Returns:
        :class:`~hf_kd.core.losses.DistillationLoss` (``kd`` is ``None`` without teachers).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"kd_divergence={divergence!r} is not supported; expected one of {DIVERGENCES}")
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)} do not fit; expected "
                         "hidden [N, H] and weight [V, H]")
    teachers = list(teachers or [])
    if any(isinstance(t, SparseTargets) for t in teachers) and (len(teachers) != 1 or divergence != "forward_kl"):
        raise ValueError("stored teacher targets are one target per step (an ensemble's is stored mixed) and support "
                         f"forward_kl only; got {len(teachers)} targets and kd_divergence={divergence!r}")
    for t in teachers:
        if isinstance(t, SparseTargets):
            if len(t) != hidden.shape[0]:
                raise ValueError(f"stored teacher targets hold {len(t)} rows but this micro-batch has "
                                 f"{hidden.shape[0]} KD rows: the cache was produced for another stream")
            continue
        rows, vocab = (t.shape[0], t.shape[-1]) if isinstance(t, torch.Tensor) else (t[0].shape[0], t[1].shape[0])
        if rows != hidden.shape[0] or vocab != weight.shape[0]:
            raise ValueError(f"a teacher target ({rows} rows, {vocab} outputs) and the student's ({hidden.shape[0]} "
                             f"rows, vocabulary {weight.shape[0]}) do not match")
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    dev = hidden.device
    ce_den = torch.as_tensor(ce_denominator, device=dev)
    kd_den = ce_den if kd_denominator is None else torch.as_tensor(kd_denominator, device=dev)
    loss, ce, kd = _ChunkedLinearKD.apply(hidden, weight, bias, labels.reshape(-1), ce_den, kd_den, float(alpha),
                                          float(temperature), divergence, int(chunk), teachers,
                                          torch.is_grad_enabled(), missing_mass)
    return DistillationLoss(loss=loss, ce=ce, kd=kd if teachers else None)


class _LogitsKD(torch.autograd.Function):
    """The chunked loss's math on logits that already exist (one chunk): the loss and d(loss)/d(logits) from
    :func:`_chunk_grad_logits` in forward, ``grad_output`` times that in backward."""

    @staticmethod
    def forward(ctx, logits, labels, ce_den, kd_den, alpha, temperature, divergence, teachers):
        ce_scale = (1.0 - alpha) / ce_den.float()
        kd_scale = alpha * temperature / kd_den.float()  # alpha * T^2 * (1/T from d(z/T)/dz) / count
        ce_sum, kd_sum, grad = _chunk_grad_logits(logits.detach().float(), labels, teachers, temperature, divergence,
                                                  ce_scale, kd_scale)
        ce, kd = ce_sum / ce_den, kd_sum / kd_den
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        ctx.mark_non_differentiable(ce, kd)
        return (1.0 - alpha) * ce + alpha * temperature**2 * kd, ce, kd

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        (grad,) = ctx.saved_tensors
        return grad.mul(grad_loss).to(ctx.dtype), None, None, None, None, None, None, None


def logits_distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                             *, alpha: float, temperature: float, divergence: str = "forward_kl",
                             ce_denominator: float | torch.Tensor,
                             kd_denominator: float | torch.Tensor | None = None) -> DistillationLoss:
    """``distillation_loss(student_logits, labels, teacher_logits, ...)`` with KD at every row, from one
    log-softmax of the student shared by CE and KD (two at ``T != 1``) and a hand-written gradient (the chunked
    loss's per-chunk math): for student rows that already exist, e.g. an MLM's masked rows under the sparse head.
    Fewer passes over ``[N, V]`` than autograd through the CE, the log-softmax and the KL (about half the loss's
    time on the tiny-BERT benchmark). Without gradients (evaluation) it is :func:`distillation_loss` itself.

    Args: as :func:`hf_kd.core.losses.distillation_loss`; ``teacher_logits`` non-empty, ``[N, V]`` each.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"kd_divergence={divergence!r} is not supported; expected one of {DIVERGENCES}")
    v = student_logits.shape[-1]
    flat, labels = student_logits.reshape(-1, v), labels.reshape(-1)
    teachers = [t.reshape(-1, t.shape[-1]) for t in teacher_logits]
    if not teachers or any(t.shape != flat.shape for t in teachers):
        raise ValueError(f"teacher logits {[tuple(t.shape) for t in teachers]} and the student's {tuple(flat.shape)} "
                         "do not match; expected one or more [N, V] teachers at the student's rows")
    if not (torch.is_grad_enabled() and flat.requires_grad):
        return distillation_loss(flat, labels, teachers, alpha=alpha, temperature=temperature, divergence=divergence,
                                 ce_denominator=ce_denominator, kd_denominator=kd_denominator)
    ce_den = torch.as_tensor(ce_denominator, device=flat.device)
    kd_den = ce_den if kd_denominator is None else torch.as_tensor(kd_denominator, device=flat.device)
    loss, ce, kd = _LogitsKD.apply(flat, labels, ce_den, kd_den, float(alpha), float(temperature), divergence,
                                   teachers)
    return DistillationLoss(loss=loss, ce=ce, kd=kd)
