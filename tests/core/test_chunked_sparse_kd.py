"""The chunked causal-LM loss with stored sparse targets equals autograd through the sparse loss on full logits
(value and gradients), for each treatment of the missing mass, at k below the vocabulary and T != 1."""

import pytest
import torch

from hf_kd.core.chunked_kd import chunked_distillation_loss
from hf_kd.core.sparse_kd import sampled_targets, sparse_distillation_loss, topk_targets


@pytest.mark.parametrize("missing_mass", ["rest", "renormalize", "sampled"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_sparse_loss_and_gradients_equal_the_reference(missing_mass, temperature):
    g = torch.Generator().manual_seed(0)
    n, h, v, k = 13, 8, 50, 7
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(v, h, generator=g).mul(0.5).requires_grad_()
    bias = torch.randn(v, generator=g).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[3] = -100
    t_logp = torch.log_softmax(torch.randn(n, v, generator=g) * 2 / temperature, -1)
    targets = sampled_targets(t_logp, k, g) if missing_mass == "sampled" else topk_targets(t_logp, k)
    kw = dict(alpha=0.4, temperature=temperature, ce_denominator=torch.tensor(11.0), kd_denominator=torch.tensor(9.0))

    ref = sparse_distillation_loss(torch.nn.functional.linear(hidden, weight, bias), labels, targets,
                                   missing_mass=missing_mass, **kw)
    ref_grads = torch.autograd.grad(ref.loss, (hidden, weight, bias))
    out = chunked_distillation_loss(hidden, weight, bias, labels, [targets], chunk_size=4, missing_mass=missing_mass,
                                    **kw)
    grads = torch.autograd.grad(out.loss, (hidden, weight, bias))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kd, ref.kd, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
