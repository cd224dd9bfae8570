"""The KD loss from *stored* sparse teacher targets (top-k ids, their log-probs, the log of the rest mass).

A teacher-output cache (``hf_kd/core/teacher_cache.py``) keeps, per KD position, the teacher's ``k`` most likely
token ids, their log-probabilities and ``log(1 - sum of those probabilities)`` (the "rest" mass, computed by the
producer in log space from the logits outside the top k, never as ``1 - sum``: at large k that is rounding noise).
This module turns those into the forward KL of ``docs/design.md`` ("Teacher-output cache"):

``missing_mass="rest"`` (default): KL over K+1 buckets -- the k stored tokens plus one bucket holding everything
    else, with the student's bucket mass ``log(sum of its probabilities outside the stored ids)``. Bias: this is the
    KL between the two distributions *coarse-grained* to those buckets, so it never exceeds the full KL (data
    processing inequality) and says nothing about how the student spreads its tail mass; the total tail mass is
    matched exactly. With ``k >= V`` the rest bucket is empty and the loss equals the dense one.
``missing_mass="renormalize"``: the teacher's k probabilities renormalised to sum to 1, the student left as is (the
    common "top-k KD"). Bias: the target claims zero tail mass, so the loss pushes the student to move all its
    mass onto the k stored tokens (over-confidence, growing with the teacher's true rest mass); it can exceed the
    full KL.
``missing_mass="sampled"``: targets from :func:`sampled_targets` -- ``n`` tokens drawn *from the teacher* per
    position (Sparse Logit Sampling, Anshumann et al. 2025, with the teacher as the proposal, so every draw has
    importance weight ``1/n``): ``(1/n) sum_draws (log p_i - log q_i)``. Unbiased: its expectation over the draws is
    the full KL and the expectation of its gradient the full gradient, at the price of variance (no bias to state).

Temperature: the producer stores ``log softmax(t / T)`` at the run's ``T`` (``Manifest.temperature``). A cache is
exact only at the temperature it was produced at: re-tempering stored log-probs (``logp / T`` renormalised) is
exact only at ``T = 1``, because the rest mass at another ``T`` depends on the tail logits, which are not stored.
So :func:`sparse_kd_per_row` takes the student at the stored ``T`` and the reader refuses another ``T``.

Ensembles: the cache stores, per step, the target the student uses at that step -- for ``mean`` the top-k of the
teachers' mixture ``log mean_i softmax(t_i / T)`` (exact, formed from full logits at production time), for
``sample`` the selected teacher's top-k -- so the loss always takes one :class:`SparseTargets`.

Math in float32 (as ``core/losses.py``); the per-row values are *summed* by :func:`sparse_kd_sum`, the caller
divides by the step-level KD count exactly as for :func:`hf_kd.core.losses.distillation_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import DistillationLoss, ce_sum

MISSING_MASS = ("rest", "renormalize", "sampled")
# Stands in for log(0) in the student's rest bucket when the stored ids cover the whole vocabulary: finite, so
# logsumexp's backward stays defined (exp(-inf - -inf) is NaN); exp() of it is exactly 0 in float32.
_LOG_ZERO = -1e30


@dataclass
class SparseTargets:
    """Stored teacher targets for ``R`` KD rows: ``ids`` ``[R, k]`` (int), ``logp`` ``[R, k]`` teacher
    log-probabilities at the stored temperature, ``log_rest`` ``[R]`` = log of the teacher mass outside ``ids``
    (``-inf`` when ``ids`` cover the vocabulary)."""

    ids: torch.Tensor
    logp: torch.Tensor
    log_rest: torch.Tensor

    def to(self, device) -> SparseTargets:
        return SparseTargets(self.ids.to(device), self.logp.to(device), self.log_rest.to(device))

    def __len__(self) -> int:
        return self.ids.shape[0]


def sparse_kd_per_row(student_logits: torch.Tensor, targets: SparseTargets, temperature: float = 1.0,
                      missing_mass: str = "rest") -> torch.Tensor:
    """Forward KL(teacher || student) per row on the stored support (see the module docstring for the variants).

    Args:
        student_logits: ``[R, V]`` raw student logits at the KD rows (any dtype; promoted to float32).
        targets: the stored targets for the same ``R`` rows, produced at ``temperature``.
        temperature: the run's ``T``; the student is softened by it (the targets already are).
        missing_mass: ``"rest"`` (K+1 bucket, default) or ``"renormalize"`` (teacher renormalised on its top k).
    Returns:
        float32 ``[R]``, unscaled (no ``T**2``), non-negative.
    """
    if missing_mass not in MISSING_MASS:
        raise ValueError(f"missing_mass={missing_mass!r} is not supported; expected one of {MISSING_MASS}")
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    ids = targets.ids.long()
    t_logp = targets.logp.float()
    s_at = s_logp.gather(-1, ids)
    if missing_mass == "sampled":
        return (t_logp - s_at).mean(-1)
    if missing_mass == "renormalize":
        t_norm = t_logp - torch.logsumexp(t_logp, dim=-1, keepdim=True)
        return F.kl_div(s_at, t_norm, reduction="none", log_target=True).sum(-1)
    on_support = F.kl_div(s_at, t_logp, reduction="none", log_target=True).sum(-1)
    # The student's rest mass from its own log-probs outside the stored ids (not 1 - sum: cancellation at large k).
    outside = s_logp.scatter(-1, ids, float("-inf"))
    floor = outside.new_full((outside.shape[0], 1), _LOG_ZERO)
    s_rest = torch.logsumexp(torch.cat([outside, floor], dim=-1), dim=-1)
    t_rest = targets.log_rest.float()
    p_rest = t_rest.exp()  # 0 where the teacher has no rest mass; the finite stand-in keeps 0 * (...) == 0
    rest = p_rest * (torch.where(torch.isfinite(t_rest), t_rest, 0.0) - s_rest)
    return on_support + rest


class _FusedSparseKDSum(torch.autograd.Function):
    """Sum over rows of the sparse KD with a hand-written gradient: one log-softmax over ``[R, V]`` forward and
    ``(p - q~) / T`` backward (:func:`sparse_kd_parts`), instead of autograd through the rest bucket's scatter,
    concatenation and second logsumexp (the cached MLM step spent ~15% of its time there, benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, student_logits, ids, logp, log_rest, temperature, missing_mass):
        s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
        kd, beta, on = sparse_kd_parts(s_logp, SparseTargets(ids, logp, log_rest), missing_mass)
        ctx.save_for_backward(s_logp, ids, beta, on)
        ctx.temperature, ctx.dtype = temperature, student_logits.dtype
        return kd.sum()

    @staticmethod
    def backward(ctx, grad_out):
        s_logp, ids, beta, on = ctx.saved_tensors
        p = s_logp.exp()
        # q~: beta * p off the stored ids, `on` at them (scatter_add: sampled ids may repeat, and beta is 0 there)
        q = (beta.unsqueeze(-1) * p).scatter(-1, ids.long(), 0.0).scatter_add(-1, ids.long(), on)
        grad = (p - q).mul_(grad_out / ctx.temperature)
        return grad.to(ctx.dtype), None, None, None, None, None


def sparse_kd_sum(student_logits: torch.Tensor, targets: SparseTargets, temperature: float = 1.0,
                  missing_mass: str = "rest") -> torch.Tensor:
    """Sum over rows of the sparse KD (float32 scalar; divide by the step's KD count), with the fused gradient of
    :class:`_FusedSparseKDSum`; value and gradient equal autograd through :func:`sparse_kd_per_row` (the rest
    variant up to the rounding of the student's rest mass, taken as ``1 - sum(p on the ids)``)."""
    if missing_mass not in MISSING_MASS:
        raise ValueError(f"missing_mass={missing_mass!r} is not supported; expected one of {MISSING_MASS}")
    return _FusedSparseKDSum.apply(student_logits, targets.ids, targets.logp, targets.log_rest, temperature,
                                   missing_mass)


def topk_targets(teacher_logp: torch.Tensor, k: int, inplace: bool = False) -> SparseTargets:
    """The producer's reduction of full float32 teacher log-probs ``[R, V]`` to :class:`SparseTargets`.

    ``k >= V`` keeps every token (rest ``-inf``). The rest mass is the logsumexp of the log-probs *outside* the
    top k, so it is exact in log space even when it is far below float32's resolution of ``1 - sum(p)``.
    ``inplace``: overwrite ``teacher_logp``'s top-k entries instead of a copy (the producer hands over a temporary:
    one ``[R, V]`` copy less per chunk, the same values).
    """
    teacher_logp = teacher_logp.float()
    v = teacher_logp.shape[-1]
    k = min(k, v)
    logp, ids = teacher_logp.topk(k, dim=-1)
    if k == v:
        log_rest = teacher_logp.new_full(teacher_logp.shape[:-1], float("-inf"))
    else:
        rest = teacher_logp.scatter_(-1, ids, float("-inf")) if inplace else teacher_logp.scatter(-1, ids, float("-inf"))
        log_rest = torch.logsumexp(rest, dim=-1)
    return SparseTargets(ids=ids.to(torch.int32), logp=logp, log_rest=log_rest)


def sampled_targets(teacher_logp: torch.Tensor, n: int, generator: torch.Generator | None = None) -> SparseTargets:
    """``n`` token ids per row drawn with replacement from the teacher's distribution, with their log-probabilities
    (for ``missing_mass="sampled"``; ``log_rest`` is NaN: no rest mass is used). Draws come from ``generator``, so a
    producer seeded per (step, micro-batch) stores the same draws on every rerun."""
    teacher_logp = teacher_logp.float()
    if teacher_logp.shape[0] == 0:
        ids = torch.zeros(0, n, dtype=torch.long, device=teacher_logp.device)
    else:
        ids = torch.multinomial(teacher_logp.exp(), n, replacement=True, generator=generator)
    return SparseTargets(ids=ids.to(torch.int32), logp=teacher_logp.gather(-1, ids),
                         log_rest=teacher_logp.new_full(teacher_logp.shape[:-1], float("nan")))


def sparse_kd_parts(s_logp: torch.Tensor, targets: SparseTargets,
                    missing_mass: str = "rest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a loss that writes its own gradients (the chunked causal-LM loss): the per-row KD value and the dense
    target ``q~`` whose forward-KL gradient ``p - q~`` (w.r.t. the tempered student logits, ``p = exp(s_logp)``)
    is the gradient of :func:`sparse_kd_per_row`, in factored form -- ``q~ = beta * p`` off the stored ids and
    ``on`` at them -- so the caller needs no extra pass over ``[R, V]`` beyond ``p`` itself.

    ``rest``: ``on = q``, ``beta = q_rest / p_rest`` (differentiating ``-q_rest log p_rest`` puts the student's own
    distribution, scaled to the teacher's rest mass, off the support). The student's rest mass is taken as
    ``1 - sum(p on the ids)`` here (clamped): its rounding only matters where the teacher's rest mass is itself
    negligible. ``renormalize``: ``on`` = the renormalised teacher, ``beta = 0``. ``sampled``: each draw ``1/n``
    (ids may repeat: scatter-add ``on``), ``beta = 0``. Returns ``(kd [R], beta [R], on [R, k])``, all detached.
    """
    s_logp = s_logp.detach()
    ids = targets.ids.long()
    t_logp = targets.logp.float()
    s_at = s_logp.gather(-1, ids)
    zero = torch.zeros_like(s_at[:, 0])
    if missing_mass == "sampled":
        return (t_logp - s_at).mean(-1), zero, torch.full_like(t_logp, 1.0 / ids.shape[-1])
    if missing_mass == "renormalize":
        t_norm = t_logp - torch.logsumexp(t_logp, dim=-1, keepdim=True)
        on = t_norm.exp()
        return (on * (t_norm - s_at)).sum(-1), zero, on
    on = t_logp.exp()
    t_rest = targets.log_rest.float()
    r = t_rest.exp()  # 0 where the ids cover the vocabulary (log_rest = -inf)
    p_rest = (1.0 - s_at.exp().sum(-1)).clamp_min(torch.finfo(torch.float32).tiny)
    rest = r * (torch.where(torch.isfinite(t_rest), t_rest, 0.0) - p_rest.log())
    return (on * (t_logp - s_at)).sum(-1) + rest, r / p_rest, on


def sparse_distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, targets: SparseTargets,
                             kd_rows: torch.Tensor | None = None, *, alpha: float, temperature: float,
                             ce_denominator: float | torch.Tensor, kd_denominator: float | torch.Tensor | None = None,
                             missing_mass: str = "rest") -> DistillationLoss:
    """:func:`hf_kd.core.losses.distillation_loss` with stored targets: ``(1 - alpha) * CE + alpha * T**2 * KD``,
    KD from :func:`sparse_kd_sum` (forward KL only), each term a sum over its rows divided by its step count.

    Args:
        student_logits: ``[N, V]`` (or ``[B, L, V]``, flattened); labels alike, -100 where no CE is taken.
        targets: the stored targets of the KD rows, in row-major order.
        kd_rows: ``[N]`` int64 indices of the KD rows among the student's rows; ``None`` = every row.
    """
    v = student_logits.shape[-1]
    flat = student_logits.reshape(-1, v)
    ce = ce_sum(flat, labels.reshape(-1)) / ce_denominator
    kd_logits = flat if kd_rows is None else flat.index_select(0, kd_rows)
    if kd_logits.shape[0] != len(targets):
        raise ValueError(f"stored teacher targets hold {len(targets)} rows but this micro-batch has "
                         f"{kd_logits.shape[0]} KD rows: the cache was produced for another stream")
    kd = sparse_kd_sum(kd_logits, targets, temperature, missing_mass) / (
        ce_denominator if kd_denominator is None else kd_denominator)
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kd
    return DistillationLoss(loss=loss, ce=ce.detach(), kd=kd.detach())
