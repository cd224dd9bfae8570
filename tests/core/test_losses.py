import math

import pytest
import torch

from hf_kd.core.losses import ce_sum, distillation_loss, kd_divergence_per_position, teacher_log_probs


def _logits(n=6, v=11, seed=0, scale=3.0):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale


def test_kd_is_zero_for_identical_logits():
    s = _logits()
    out = distillation_loss(s, torch.full((6,), -100), [s.clone()], alpha=1.0, temperature=2.0,
                            ce_denominator=1, kd_denominator=6)
    assert out.kd.item() == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-5)


def test_forward_kl_matches_hand_computation_and_t2_scaling():
    s, t = _logits(seed=1), _logits(seed=2)
    T = 3.0
    p = torch.softmax(t / T, -1)
    expected = (p * (torch.log(p) - torch.log_softmax(s / T, -1))).sum(-1).sum() / 6
    out = distillation_loss(s, torch.full((6,), -100), [t], alpha=1.0, temperature=T, ce_denominator=1,
                            kd_denominator=6)
    assert out.kd.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(T**2 * expected.item(), rel=1e-5)


def test_alpha_weights_ce_and_kd():
    s, t = _logits(seed=1), _logits(seed=2)
    labels = torch.tensor([1, -100, 3, 4, -100, 0])
    out = distillation_loss(s, labels, [t], alpha=0.25, temperature=2.0, ce_denominator=4, kd_denominator=6)
    ce = torch.nn.functional.cross_entropy(s, labels, ignore_index=-100)
    assert out.ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.75 * ce.item() + 0.25 * 4.0 * out.kd.item(), rel=1e-6)


def test_no_teacher_is_plain_ce_with_weight_one():
    s = _logits()
    labels = torch.tensor([1, -100, 3, -100, -100, 0])
    out = distillation_loss(s, labels, None, alpha=0.9, temperature=4.0, ce_denominator=3)
    assert out.kd is None
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(s, labels).item(), rel=1e-6)


def test_kd_mask_ignores_unselected_positions():
    s, t = _logits(seed=3), _logits(seed=4)
    mask = torch.tensor([True, False, True, False, False, True])
    out = distillation_loss(s, torch.full((6,), -100), [t[mask]], kd_mask=mask, alpha=1.0, temperature=1.0,
                            ce_denominator=1, kd_denominator=3)
    # garbage at unselected student rows changes nothing
    s2 = s.clone()
    s2[~mask] = 1e4
    out2 = distillation_loss(s2, torch.full((6,), -100), [t[mask]], kd_mask=mask, alpha=1.0, temperature=1.0,
                             ce_denominator=1, kd_denominator=3)
    assert out.kd.item() == pytest.approx(out2.kd.item(), rel=1e-6)
    ref = kd_divergence_per_position(s[mask], teacher_log_probs([t[mask]], 1.0), 1.0).mean()
    assert out.kd.item() == pytest.approx(ref.item(), rel=1e-6)


def test_ce_ignores_minus_100():
    s = _logits()
    labels = torch.tensor([2, -100, -100, -100, -100, -100])
    assert ce_sum(s, labels).item() == pytest.approx(torch.nn.functional.cross_entropy(s[:1], labels[:1]).item())


def test_forward_and_reverse_kl_differ_and_reverse_matches_definition():
    s, t = _logits(seed=5), _logits(seed=6)
    fwd = kd_divergence_per_position(s, teacher_log_probs([t], 2.0), 2.0, "forward_kl")
    rev = kd_divergence_per_position(s, teacher_log_probs([t], 2.0), 2.0, "reverse_kl")
    q = torch.softmax(s / 2.0, -1)
    expected_rev = (q * (torch.log(q) - torch.log_softmax(t / 2.0, -1))).sum(-1)
    assert torch.allclose(rev, expected_rev, atol=1e-5)
    assert not torch.allclose(fwd, rev, atol=1e-3)
    assert (fwd >= -1e-6).all() and (rev >= -1e-6).all()


def test_ensemble_mean_is_mean_of_probabilities():
    t1, t2 = _logits(seed=7), _logits(seed=8)
    logp = teacher_log_probs([t1, t2], 2.0)
    expected = 0.5 * (torch.softmax(t1 / 2, -1) + torch.softmax(t2 / 2, -1))
    assert torch.allclose(logp.exp(), expected, atol=1e-6)


def test_no_gradient_reaches_teacher_and_student_gets_one():
    s = _logits().requires_grad_(True)
    t = _logits(seed=9).requires_grad_(True)
    out = distillation_loss(s, torch.tensor([1, 2, 3, -100, -100, -100]), [t], alpha=0.5, temperature=2.0,
                            ce_denominator=3, kd_denominator=6)
    out.loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_low_precision_inputs_are_computed_in_float32():
    s, t = _logits(seed=10), _logits(seed=11)
    ref = distillation_loss(s, torch.full((6,), -100), [t], alpha=1.0, temperature=1.0, ce_denominator=1,
                            kd_denominator=6)
    low = distillation_loss(s.bfloat16(), torch.full((6,), -100), [t.bfloat16()], alpha=1.0, temperature=1.0,
                            ce_denominator=1, kd_denominator=6)
    assert low.loss.dtype == torch.float32
    assert math.isclose(low.kd.item(), ref.kd.item(), rel_tol=0.05)


def test_unknown_divergence_is_rejected():
    with pytest.raises(ValueError, match="kd_divergence='js'"):
        kd_divergence_per_position(_logits(), teacher_log_probs([_logits()], 1.0), 1.0, "js")
