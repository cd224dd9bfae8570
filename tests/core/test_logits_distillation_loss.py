"""The fused loss on given logits (CE and KD from one student log-softmax, hand-written gradient) equals
``distillation_loss`` with KD at every row: loss, logged terms and gradients, for both divergences, T = 1 and T != 1,
one teacher and a mean ensemble, rows without a label, and low-precision logits."""

import pytest
import torch

from hf_kd.core.chunked_kd import logits_distillation_loss
from hf_kd.core.losses import distillation_loss


def _case(n=14, v=37, teachers=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g) * 2.0
    labels = torch.randint(0, v, (n,), generator=g)
    labels[[2, 5]] = -100  # rows that carry KD but no CE
    return z, labels, [torch.randn(n, v, generator=g) * 2.0 for _ in range(teachers)]


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("teachers", [1, 2])
def test_fused_logits_loss_equals_the_autograd_loss(divergence, temperature, teachers):
    z, labels, t = _case(teachers=teachers, seed=teachers)
    kw = dict(alpha=0.3, temperature=temperature, divergence=divergence, ce_denominator=torch.tensor(12.0),
              kd_denominator=torch.tensor(14.0))
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ref = distillation_loss(a, labels, t, **kw)
    out = logits_distillation_loss(b, labels, t, **kw)
    (3.0 * ref.loss).backward()  # an incoming gradient other than 1 is applied
    (3.0 * out.loss).backward()
    for x, y in ((out.loss, ref.loss), (out.ce, ref.ce), (out.kd, ref.kd)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
    assert b.grad[2].abs().max() > 0  # an unlabelled row still gets the KD gradient


def test_low_precision_logits_get_a_gradient_of_their_dtype():
    z, labels, t = _case(seed=4)
    kw = dict(alpha=0.5, temperature=2.0, ce_denominator=12.0)
    x = z.to(torch.bfloat16).requires_grad_(True)
    out = logits_distillation_loss(x, labels, t, **kw)
    out.loss.backward()
    ref_in = z.to(torch.bfloat16).float().requires_grad_(True)
    distillation_loss(ref_in, labels, t, **kw).loss.backward()
    assert out.loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), ref_in.grad, rtol=2e-2, atol=1e-3)


def test_without_gradients_it_is_the_plain_loss_and_bad_shapes_are_refused():
    z, labels, t = _case(seed=5)
    kw = dict(alpha=0.5, temperature=1.0, ce_denominator=12.0)
    with torch.no_grad():
        out = logits_distillation_loss(z, labels, t, **kw)
    torch.testing.assert_close(out.loss, distillation_loss(z, labels, t, **kw).loss)
    with pytest.raises(ValueError, match="teacher logits .* do not match"):
        logits_distillation_loss(z, labels, [t[0][:3]], **kw)
    with pytest.raises(ValueError, match="kd_divergence='js'"):
        logits_distillation_loss(z, labels, t, divergence="js", **kw)
