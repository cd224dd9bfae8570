"""The chunked fused head + CE + KD loss equals the unchunked reference, loss and gradients."""

import pytest
import torch

from hf_kd.core.chunked_kd import chunked_distillation_loss
from hf_kd.core.losses import distillation_loss

N, H, V = 23, 8, 37


def _setup(seed=0, bias=True, n_teachers=1, teacher_h=12):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g)).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.7).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.3).requires_grad_() if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 5, 6, 17]] = -100
    teachers = [(torch.randn(N, teacher_h, generator=g), torch.randn(V, teacher_h, generator=g) * 0.5,
                 torch.randn(V, generator=g) if i % 2 == 0 else None) for i in range(n_teachers)]
    return hidden, weight, b, labels, teachers


def _grads(loss, params):
    return torch.autograd.grad(loss, [p for p in params if p is not None])


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("n_teachers", [1, 3])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_chunked_equals_unchunked_loss_and_grads(divergence, n_teachers, temperature):
    hidden, weight, b, labels, teachers = _setup(n_teachers=n_teachers)
    kw = dict(alpha=0.3, temperature=temperature, divergence=divergence, ce_denominator=31.0, kd_denominator=40.0)
    logits = hidden @ weight.t() + b
    t_logits = [th @ tw.t() + (tb if tb is not None else 0) for th, tw, tb in teachers]
    ref = distillation_loss(logits, labels, t_logits, **kw)
    out = chunked_distillation_loss(hidden, weight, b, labels, teachers, chunk_size=5, **kw)  # 5 does not divide 23
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert out.ce.item() == pytest.approx(ref.ce.item(), rel=1e-5)
    assert out.kd.item() == pytest.approx(ref.kd.item(), rel=1e-5)
    for got, want in zip(_grads(out.loss * 1.7, (hidden, weight, b)), _grads(ref.loss * 1.7, (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_no_teacher_is_plain_ce_with_weight_one_and_no_bias():
    hidden, weight, _, labels, _ = _setup(bias=False)
    ref = distillation_loss(hidden @ weight.t(), labels, None, alpha=0.9, temperature=4.0, ce_denominator=19)
    out = chunked_distillation_loss(hidden, weight, None, labels, None, alpha=0.9, temperature=4.0,
                                    ce_denominator=19, chunk_size=4)
    assert out.kd is None
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    for got, want in zip(_grads(out.loss, (hidden, weight)), _grads(ref.loss, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 23, 1000])
def test_result_does_not_depend_on_chunk_size(chunk_size):
    hidden, weight, b, labels, teachers = _setup(seed=3, n_teachers=2)
    kw = dict(alpha=0.6, temperature=3.0, ce_denominator=19.0, kd_denominator=23.0)
    ref = chunked_distillation_loss(hidden, weight, b, labels, teachers, chunk_size=N, **kw)
    out = chunked_distillation_loss(hidden, weight, b, labels, teachers, chunk_size=chunk_size, **kw)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    torch.testing.assert_close(_grads(out.loss, (hidden,))[0], _grads(ref.loss, (hidden,))[0])


def test_frozen_head_gets_no_gradient_and_hidden_still_does():
    hidden, weight, b, labels, teachers = _setup(seed=4)
    weight.requires_grad_(False)
    out = chunked_distillation_loss(hidden, weight, b, labels, teachers, alpha=0.5, temperature=2.0,
                                    ce_denominator=19.0, chunk_size=6)
    out.loss.backward()
    assert weight.grad is None and hidden.grad is not None and b.grad is not None


def test_bfloat16_close_to_reference():
    hidden, weight, b, labels, teachers = _setup(seed=5)
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    kw = dict(alpha=0.5, temperature=2.0, ce_denominator=19.0, kd_denominator=23.0)
    ref = distillation_loss(hb @ wb.t(), labels, [th @ tw.t() + tb for th, tw, tb in teachers], **kw)
    out = chunked_distillation_loss(hb, wb, None, labels, teachers, chunk_size=6, **kw)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=2e-2)
    g_out, g_ref = _grads(out.loss, (hb, wb)), _grads(ref.loss, (hb, wb))
    assert all(g.dtype == torch.bfloat16 for g in g_out)
    for got, want in zip(g_out, g_ref):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-3)


def test_mismatched_shapes_are_refused():
    hidden, weight, b, labels, teachers = _setup()
    with pytest.raises(ValueError, match="do not match"):
        chunked_distillation_loss(hidden, weight, b, labels, [(teachers[0][0][:3], *teachers[0][1:])], alpha=0.5,
                                  temperature=1.0, ce_denominator=1.0)
    with pytest.raises(ValueError, match="kd_divergence"):
        chunked_distillation_loss(hidden, weight, b, labels, teachers, alpha=0.5, temperature=1.0,
                                  ce_denominator=1.0, divergence="js")
