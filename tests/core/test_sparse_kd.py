"""The sparse KD loss from stored top-k targets: equal to the dense loss when k covers the vocabulary, and the
stated bias of each treatment of the missing mass when it does not."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_kd.core.losses import distillation_loss, teacher_log_probs
from hf_kd.core.sparse_kd import SparseTargets, sampled_targets, sparse_kd_per_row, sparse_kd_sum, topk_targets


def _logits(rows=6, vocab=11, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def _dense_kd_and_grad(s, teachers, temperature):
    s = s.clone().requires_grad_(True)
    labels = torch.full((s.shape[0],), -100)
    out = distillation_loss(s, labels, teachers, alpha=1.0, temperature=temperature, ce_denominator=1.0)
    (out.loss / temperature**2).backward()
    return out.kd, s.grad


def _sparse_kd_and_grad(s, targets, temperature, missing_mass="rest"):
    s = s.clone().requires_grad_(True)
    kd = sparse_kd_sum(s, targets, temperature, missing_mass)
    kd.backward()
    return kd.detach(), s.grad


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("k", [11, 64])
def test_full_support_equals_dense_loss_and_gradients(temperature, k):
    s, t = _logits(seed=1), _logits(seed=2)
    targets = topk_targets(teacher_log_probs([t], temperature), k)  # stored at the run's T
    assert targets.ids.shape[1] == 11 and torch.isneginf(targets.log_rest).all()
    dense, dense_grad = _dense_kd_and_grad(s, [t], temperature)
    for missing_mass in ("rest", "renormalize"):
        sparse, sparse_grad = _sparse_kd_and_grad(s, targets, temperature, missing_mass)
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(sparse_grad).all()


def test_full_support_mean_ensemble_equals_dense():
    s, t1, t2 = _logits(seed=3), _logits(seed=4), _logits(seed=5)
    targets = topk_targets(teacher_log_probs([t1, t2], 1.0), 99)  # the mixture, as the producer stores it
    dense, dense_grad = _dense_kd_and_grad(s, [t1, t2], 1.0)
    sparse, sparse_grad = _sparse_kd_and_grad(s, targets, 1.0)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-6)


def test_rest_mass_is_exact_in_log_space_where_one_minus_sum_is_noise():
    t = torch.zeros(1, 50)
    t[0, :3] = 40.0  # the other 47 tokens hold ~1e-17 of the mass: below float32's 1 - sum(p)
    targets = topk_targets(F.log_softmax(t, -1), 3)
    expected = math.log(47) - 40.0 - math.log(3)  # log(47 e^0 / (3 e^40 + 47)), to first order
    assert targets.log_rest.item() == pytest.approx(expected, abs=1e-4)
    assert 1.0 - targets.logp.exp().sum().item() <= 1e-6  # what a linear-space rest mass would have seen


def test_rest_mass_from_the_sum_and_from_the_tail_agree_with_the_exact_tail_logsumexp():
    # rows spanning both ways of forming it: broad teachers (rest >> 1e-2) and sharp ones (rest far below it)
    t = torch.cat([_logits(rows=20, vocab=300, seed=3, scale=1.0), _logits(rows=20, vocab=300, seed=4, scale=30.0)])
    t_logp = F.log_softmax(t.double(), -1).float()
    targets = topk_targets(t_logp, 16)
    tail = t_logp.double().scatter(-1, targets.ids.long(), float("-inf"))
    exact = torch.logsumexp(tail, -1)
    assert (exact > math.log(1e-2)).any() and (exact < math.log(1e-2)).any()  # both regimes present
    assert torch.allclose(targets.log_rest.double(), exact, atol=1e-4, rtol=0)
    assert torch.equal(t_logp, F.log_softmax(t.double(), -1).float())  # the caller's tensor is left untouched


def test_rest_bucket_is_a_lower_bound_of_the_full_kl_and_matches_the_tail_mass():
    s, t = _logits(rows=40, vocab=30, seed=6, scale=1.5), _logits(rows=40, vocab=30, seed=7, scale=1.5)
    t_logp = F.log_softmax(t, -1)
    full = F.kl_div(F.log_softmax(s, -1), t_logp, reduction="none", log_target=True).sum(-1)
    for k in (1, 4, 16, 29):
        rest = sparse_kd_per_row(s, topk_targets(t_logp, k), missing_mass="rest")
        assert (rest <= full + 1e-5).all() and (rest >= -1e-6).all()
    # Coarse-graining: a student equal to the teacher on the support and in total tail mass, but with the tail
    # shaped differently, has zero rest-bucket loss while the full KL is positive.
    targets = topk_targets(t_logp[:1], 4)
    s_logp = t_logp[:1].clone()
    tail = torch.ones(30, dtype=torch.bool)
    tail[targets.ids[0].long()] = False
    s_logp[0, tail] = targets.log_rest[0] - math.log(int(tail.sum()))  # uniform tail, same total mass
    assert sparse_kd_per_row(s_logp, targets, missing_mass="rest").item() == pytest.approx(0.0, abs=1e-5)
    assert F.kl_div(s_logp, t_logp[:1], reduction="sum", log_target=True).item() > 1e-2


def test_renormalized_teacher_pushes_the_student_off_the_tail():
    t_logp = F.log_softmax(_logits(rows=1, vocab=20, seed=8, scale=1.0), -1)
    targets = topk_targets(t_logp, 5)
    # A student that *is* the teacher: the rest bucket says 0, the renormalised target says > 0 ...
    assert sparse_kd_per_row(t_logp, targets, missing_mass="rest").item() == pytest.approx(0.0, abs=1e-6)
    renorm_at_teacher = sparse_kd_per_row(t_logp, targets, missing_mass="renormalize").item()
    assert renorm_at_teacher == pytest.approx(-math.log1p(-targets.log_rest.exp().item()), rel=1e-4)
    assert renorm_at_teacher > 0.05  # -log(support mass)
    # ... and its gradient moves mass from the tail to the support: the tail logits' gradient is positive (descent
    # lowers them) and sums, with the support's, to 0.
    s = t_logp.clone().requires_grad_(True)
    sparse_kd_sum(s, targets, missing_mass="renormalize").backward()
    tail = torch.ones(20, dtype=torch.bool)
    tail[targets.ids[0].long()] = False
    assert (s.grad[0, tail] > 0).all()
    # The rest bucket at the teacher has a zero gradient: the teacher is its minimiser.
    s2 = t_logp.clone().requires_grad_(True)
    sparse_kd_sum(s2, targets, missing_mass="rest").backward()
    assert s2.grad.abs().max().item() < 1e-6


def test_unknown_missing_mass_is_refused():
    s = _logits()
    with pytest.raises(ValueError, match="missing_mass='drop'.*expected one of"):
        sparse_kd_per_row(s, topk_targets(F.log_softmax(s, -1), 3), missing_mass="drop")


def test_targets_move_and_count():
    s = _logits()
    targets = topk_targets(F.log_softmax(s, -1), 3)
    assert len(targets) == 6 and targets.ids.dtype == torch.int32
    assert isinstance(targets.to("cpu"), SparseTargets)


def test_sampled_tokens_are_unbiased_where_top_k_of_the_same_size_is_not():
    s, t = _logits(rows=4, vocab=30, seed=9, scale=1.0), _logits(rows=4, vocab=30, seed=10, scale=1.0)
    t_logp = F.log_softmax(t, -1)
    dense, dense_grad = _dense_kd_and_grad(s, [t], 1.0)
    g = torch.Generator().manual_seed(0)
    draws = 4000
    values, grads = [], []
    for _ in range(draws):
        value, grad = _sparse_kd_and_grad(s, sampled_targets(t_logp, 4, g), 1.0, "sampled")
        values.append(value)
        grads.append(grad)
    values, grads = torch.stack(values), torch.stack(grads)
    se = values.std() / math.sqrt(draws)
    assert abs(values.mean() - dense) < 4 * se  # the mean of the estimates is the full KL, within 4 standard errors
    grad_se = grads.std(0) / math.sqrt(draws)
    assert ((grads.mean(0) - dense_grad).abs() < 4 * grad_se + 1e-6).float().mean() > 0.99
    # top-4 targets (same 4 ids per row) are deterministic and off by far more than that
    top, top_grad = _sparse_kd_and_grad(s, topk_targets(t_logp, 4), 1.0, "rest")
    assert abs(top - dense) > 20 * se and (top_grad - dense_grad).abs().max() > 20 * grad_se.max()


def test_sampled_draws_follow_the_generator():
    t_logp = F.log_softmax(_logits(), -1)
    a = sampled_targets(t_logp, 5, torch.Generator().manual_seed(1))
    b = sampled_targets(t_logp, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a.ids, b.ids) and a.ids.shape == (6, 5) and torch.isnan(a.log_rest).all()
    torch.testing.assert_close(a.logp, t_logp.gather(-1, a.ids.long()))
    assert sampled_targets(t_logp[:0], 5).ids.shape == (0, 5)


@pytest.mark.parametrize("missing_mass", ["rest", "renormalize", "sampled"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_sparse_sum_equals_autograd_through_the_per_row_loss(missing_mass, temperature):
    """The hand-written gradient of sparse_kd_sum equals autograd through sparse_kd_per_row at k < V."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(12, 40, generator=g, dtype=torch.float64).float()
    t_logp = torch.log_softmax(torch.randn(12, 40, generator=g) * 2 / temperature, dim=-1)
    targets = (sampled_targets(t_logp, 16, torch.Generator().manual_seed(1)) if missing_mass == "sampled"
               else topk_targets(t_logp, 8))
    ref_in = s.clone().requires_grad_(True)
    ref = sparse_kd_per_row(ref_in, targets, temperature, missing_mass).sum()
    ref.backward()
    fused_in = s.clone().requires_grad_(True)
    fused = sparse_kd_sum(fused_in, targets, temperature, missing_mass)
    (3.0 * fused).backward()  # the incoming gradient is applied
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(fused_in.grad, 3.0 * ref_in.grad, rtol=1e-4, atol=1e-6)
