"""CE and sparse KD of the same rows from one fused pass with a hand-written gradient: the gradient is the exact
derivative of the value (gradcheck in float64), and value and gradient equal autograd through the unfused terms
(``ce_sum`` + ``sparse_kd_per_row``) in float32, for each treatment of the missing mass, at T = 1 and T != 1."""

import pytest
import torch
import torch.nn.functional as F

from hf_kd.core.losses import ce_sum
from hf_kd.core.sparse_kd import (
    sampled_targets,
    sparse_ce_kd_sums,
    sparse_distillation_loss,
    sparse_kd_per_row,
    topk_targets,
)

VARIANTS = ["rest", "renormalize", "sampled"]


def _case(rows, vocab, k, missing_mass, temperature, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g, dtype=torch.float64).mul(2.0).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[1] = -100  # a KD row that carries no CE
    # Stored at the run's T, as the producer does; float64 so the teacher's buckets sum to 1 to float32 accuracy.
    t_logp = F.log_softmax(torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2 / temperature, -1)
    if missing_mass == "sampled":
        targets = sampled_targets(t_logp, k, torch.Generator().manual_seed(seed + 1))
    else:
        targets = topk_targets(t_logp, k)
    return z, labels, targets


@pytest.mark.parametrize("missing_mass", VARIANTS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_gradient_is_the_derivative_of_the_fused_value(missing_mass, temperature):
    z, labels, targets = _case(5, 9, 3, missing_mass, temperature, dtype=torch.float64)
    z.requires_grad_(True)
    # Both outputs get their own incoming gradient (gradcheck probes each), so the CE and KD parts are checked apart.
    assert torch.autograd.gradcheck(
        lambda x: sparse_ce_kd_sums(x, labels, targets, temperature, missing_mass), (z,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("missing_mass", VARIANTS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_fused_terms_equal_autograd_through_the_unfused_ones(missing_mass, temperature):
    z, labels, targets = _case(12, 40, 8, missing_mass, temperature, seed=3)
    ref_in = z.clone().requires_grad_(True)
    ref_ce = ce_sum(ref_in, labels)
    ref_kd = sparse_kd_per_row(ref_in, targets, temperature, missing_mass).sum()
    (0.3 * ref_ce + 1.7 * ref_kd).backward()
    fused_in = z.clone().requires_grad_(True)
    ce, kd = sparse_ce_kd_sums(fused_in, labels, targets, temperature, missing_mass)
    (0.3 * ce + 1.7 * kd).backward()
    torch.testing.assert_close(ce, ref_ce.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kd, ref_kd.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_in.grad, ref_in.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_term_alone_has_its_own_gradient(temperature):
    z, labels, targets = _case(6, 20, 5, "rest", temperature, seed=5)
    x = z.clone().requires_grad_(True)
    ce, kd = sparse_ce_kd_sums(x, labels, targets, temperature)
    (g_ce,) = torch.autograd.grad(ce, x, retain_graph=True)  # the KD output unused: no gradient from it
    (g_kd,) = torch.autograd.grad(kd, x)
    ref = z.clone().requires_grad_(True)
    torch.testing.assert_close(g_ce, torch.autograd.grad(ce_sum(ref, labels), ref)[0], rtol=1e-5, atol=1e-6)
    ref_kd = sparse_kd_per_row(ref, targets, temperature).sum()
    torch.testing.assert_close(g_kd, torch.autograd.grad(ref_kd, ref)[0], rtol=1e-4, atol=1e-6)
    assert g_ce[1].abs().max() == 0 and g_kd[1].abs().max() > 0  # the unlabelled row: KD only


def test_low_precision_logits_get_a_gradient_of_their_dtype_computed_in_float32():
    z, labels, targets = _case(6, 20, 5, "rest", 1.0, seed=6)
    x = z.to(torch.bfloat16).requires_grad_(True)
    ce, kd = sparse_ce_kd_sums(x, labels, targets)
    (ce + kd).backward()
    assert ce.dtype == kd.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = z.to(torch.bfloat16).float().requires_grad_(True)
    (ce_sum(ref, labels) + sparse_kd_per_row(ref, targets).sum()).backward()
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("missing_mass", VARIANTS)
def test_distillation_loss_on_shared_rows_equals_the_separate_ce_and_kd_rows_path(missing_mass):
    """``kd_rows=None`` (one fused pass) and the same rows named explicitly (CE and KD taken apart) agree."""
    z, labels, targets = _case(10, 30, 6, missing_mass, 2.0, seed=7)
    kw = dict(alpha=0.4, temperature=2.0, ce_denominator=torch.tensor(9.0), kd_denominator=torch.tensor(10.0),
              missing_mass=missing_mass)
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    fused = sparse_distillation_loss(a, labels, targets, **kw)
    apart = sparse_distillation_loss(b, labels, targets, torch.arange(10), **kw)
    fused.loss.backward()
    apart.loss.backward()
    for x, y in ((fused.loss, apart.loss), (fused.ce, apart.ce), (fused.kd, apart.kd), (a.grad, b.grad)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_rows_that_do_not_match_are_refused():
    z, labels, targets = _case(6, 20, 5, "rest", 1.0)
    with pytest.raises(ValueError, match="6 student rows, 6 stored target rows and 5 labels"):
        sparse_ce_kd_sums(z, labels[:5], targets)
    with pytest.raises(ValueError, match="hold 6 rows but this micro-batch has 5 KD rows"):
        sparse_distillation_loss(z[:5], labels[:5], targets, alpha=0.5, temperature=1.0, ce_denominator=5.0)
