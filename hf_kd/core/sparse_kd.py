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

Math in float32 (as ``core/losses.py``); the per-row values are *summed* by :func:`sparse_kd_sum` (or, with the
CE of the same rows from one shared log-softmax, by :func:`sparse_ce_kd_sums`), the caller divides by the
step-level KD count exactly as for :func:`hf_kd.core.losses.distillation_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import IGNORE_INDEX, DistillationLoss, ce_sum

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


class _FusedCESparseKD(torch.autograd.Function):
    """``(CE sum, sparse KD sum)`` of the same rows from one log-softmax, with a hand-written gradient.

    Forward: one log-softmax of the rows (two when ``T != 1``: the CE is at ``T = 1``), the CE as a gather of it,
    the KD from :func:`sparse_kd_parts` (k-wide gathers). Backward, with ``g_ce`` / ``g_kd`` the incoming
    gradients: ``g_ce * valid * (softmax(z) - onehot(y)) + g_kd / T * (p_T - q~)`` written into one ``[R, V]``
    buffer (an exp, an in-place row scale, k-wide scatters). Autograd would instead keep and walk the graph of
    a second log-softmax, the rest bucket's scatter/concatenation/logsumexp and the CE's own softmax: on the
    cached MLM step those passes over ``[R, V]`` were ~20% of the step (benchmarks/RESULTS.md).
    Math in float32 (float64 stays float64, so ``gradcheck`` can check it)."""

    @staticmethod
    def forward(ctx, logits, labels, ids, logp, log_rest, temperature, missing_mass):
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logp1 = F.log_softmax(z, dim=-1) if labels is not None or temperature == 1.0 else None
        s_logp = logp1 if temperature == 1.0 else F.log_softmax(z / temperature, dim=-1)
        kd, beta, on = sparse_kd_parts(s_logp, SparseTargets(ids, logp, log_rest), missing_mass)
        if labels is None:
            ce = z.new_zeros(())
        else:
            ce = F.nll_loss(logp1, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        ctx.save_for_backward(logp1 if labels is not None else None, s_logp, ids, beta, on, labels)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        ctx.set_materialize_grads(False)  # an unused output (KD only, or CE only) costs no pass in backward
        return ce, kd.sum()

    @staticmethod
    def backward(ctx, g_ce, g_kd):
        logp1, s_logp, ids, beta, on, labels = ctx.saved_tensors
        t = ctx.temperature
        ce_row = None
        if g_ce is not None and labels is not None:
            ce_row = (labels != IGNORE_INDEX).to(s_logp.dtype) * g_ce  # rows without a label carry no CE gradient
        kd_row = fix = None
        if g_kd is not None:
            ids = ids.long()
            # p_T - q~ = (1 - beta) * p_T off the ids, p_T - on at them: scale p_T by the row, then correct the ids
            kd_row = (1.0 - beta) * (g_kd / t)
            fix = (beta.unsqueeze(1) * s_logp.gather(-1, ids).exp() - on).mul_(g_kd / t)
        if ce_row is None and kd_row is None:
            return (None,) * 7
        if t == 1.0 or ce_row is None or kd_row is None:  # one distribution carries both terms' row scales
            src = s_logp if kd_row is not None else logp1
            rows = kd_row if ce_row is None else ce_row if kd_row is None else ce_row + kd_row
            grad = src.exp().mul_(rows.unsqueeze(1))
        else:
            grad = logp1.exp().mul_(ce_row.unsqueeze(1)).addcmul_(s_logp.exp(), kd_row.unsqueeze(1))
        if fix is not None:
            grad.scatter_add_(1, ids, fix)
        if ce_row is not None:  # - onehot(y); a scatter, not boolean indexing (no host sync on a GPU)
            grad.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), -ce_row.unsqueeze(1))
        return grad.to(ctx.dtype), None, None, None, None, None, None


def sparse_ce_kd_sums(logits: torch.Tensor, labels: torch.Tensor | None, targets: SparseTargets,
                      temperature: float = 1.0, missing_mass: str = "rest") -> tuple[torch.Tensor, torch.Tensor]:
    """CE sum (at ``T = 1``, rows whose label is not -100) and sparse KD sum (at ``temperature``, every row) of the
    same ``[R, V]`` rows in one fused pass (:class:`_FusedCESparseKD`); ``labels=None`` takes no CE (its sum is 0).

    Value and gradient equal autograd through ``ce_sum(logits, labels)`` and ``sparse_kd_per_row(...).sum()`` (the
    rest variant up to the rounding of the student's rest mass, taken as ``1 - sum(p on the ids)``). The sums are
    float32 (float64 for float64 logits); divide by the step counts.
    """
    if missing_mass not in MISSING_MASS:
        raise ValueError(f"missing_mass={missing_mass!r} is not supported; expected one of {MISSING_MASS}")
    if len(targets) != logits.shape[0] or (labels is not None and labels.shape[0] != logits.shape[0]):
        raise ValueError(f"{logits.shape[0]} student rows, {len(targets)} stored target rows and "
                         f"{None if labels is None else labels.shape[0]} labels: expected one of each per row")
    return _FusedCESparseKD.apply(logits, labels, targets.ids, targets.logp, targets.log_rest, float(temperature),
                                  missing_mass)


def sparse_kd_sum(student_logits: torch.Tensor, targets: SparseTargets, temperature: float = 1.0,
                  missing_mass: str = "rest") -> torch.Tensor:
    """Sum over rows of the sparse KD: :func:`sparse_ce_kd_sums` without a CE term."""
    return sparse_ce_kd_sums(student_logits, None, targets, temperature, missing_mass)[1]


# Rest mass at or above this is formed as 1 - sum(top-k p) (float32 absolute error ~1e-7, so <= 1e-5 relative);
# below it, from the log-probs outside the top k (exact in log space however small the rest is).
REST_FROM_SUM = 1e-2


def topk_targets(teacher_logp: torch.Tensor, k: int) -> SparseTargets:
    """The producer's reduction of full float32 teacher log-probs ``[R, V]`` to :class:`SparseTargets`.

    ``k >= V`` keeps every token (rest ``-inf``). The rest mass is ``-expm1(logsumexp(top-k log-probs))`` where it
    is at least :data:`REST_FROM_SUM`, and the logsumexp of the log-probs *outside* the top k for the rows where it
    is smaller, so it stays exact in log space even far below float32's resolution of ``1 - sum(p)`` (a pass over
    ``[rows, V]`` for those rows only: on CPU that pass cost as much as the top-k itself).
    """
    teacher_logp = teacher_logp.float()
    v = teacher_logp.shape[-1]
    k = min(k, v)
    logp, ids = teacher_logp.topk(k, dim=-1)
    if k == v:
        log_rest = teacher_logp.new_full(teacher_logp.shape[:-1], float("-inf"))
        return SparseTargets(ids=ids.to(torch.int32), logp=logp, log_rest=log_rest)
    rest = -torch.expm1(torch.logsumexp(logp, dim=-1))
    log_rest = rest.clamp_min(REST_FROM_SUM).log()
    small = (rest < REST_FROM_SUM).nonzero().squeeze(-1)  # producer only (a host sync), never the training step
    if small.numel():
        rows = teacher_logp.index_select(0, small)  # a copy of those rows: the caller's tensor is left as it was
        log_rest[small] = torch.logsumexp(rows.scatter_(-1, ids[small], float("-inf")), dim=-1)
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
    KD forward KL only, each term a sum over its rows divided by its step count. When CE and KD share the rows
    (``kd_rows=None``: the masked LM's masked rows, a causal LM's positions) both come from one fused pass
    (:func:`sparse_ce_kd_sums`); otherwise the CE is taken over every row and the KD at ``kd_rows``.

    Args:
        student_logits: ``[N, V]`` (or ``[B, L, V]``, flattened); labels alike, -100 where no CE is taken.
        targets: the stored targets of the KD rows, in row-major order.
        kd_rows: ``[N]`` int64 indices of the KD rows among the student's rows; ``None`` = every row.
    """
    v = student_logits.shape[-1]
    flat = student_logits.reshape(-1, v)
    n_kd = flat.shape[0] if kd_rows is None else kd_rows.shape[0]
    if n_kd != len(targets):
        raise ValueError(f"stored teacher targets hold {len(targets)} rows but this micro-batch has "
                         f"{n_kd} KD rows: the cache was produced for another stream")
    if kd_rows is None:
        ce_total, kd_total = sparse_ce_kd_sums(flat, labels.reshape(-1), targets, temperature, missing_mass)
    else:
        ce_total = ce_sum(flat, labels.reshape(-1))
        kd_total = sparse_kd_sum(flat.index_select(0, kd_rows), targets, temperature, missing_mass)
    ce = ce_total / ce_denominator
    kd = kd_total / (ce_denominator if kd_denominator is None else kd_denominator)
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kd
    return DistillationLoss(loss=loss, ce=ce.detach(), kd=kd.detach())
