"""The vision KD step pinned against a hand computation of the objective (Hinton et al. 2015)::

    loss = (1 - alpha) * CE(s, y) + alpha * T**2 * mean_batch KL(softmax(t / T) || softmax(s / T))

The reference below is written with explicit exp/log/sum in float64 on a copy of the student -- none of
``hf_kd.core.losses`` (``F.kl_div``, ``log_softmax``, ``cross_entropy``) -- and autograd of it gives the reference
gradient. One ``KDStep`` (SGD at lr 0, so the weights stay and the gradient is read by hooks) must match both.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from hf_kd.core.schedule import teacher_indices
from hf_kd.vision.loop import KDStep

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
CLASSES, SEED = 5, 3


def _linear(seed: int, scale: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # scale > 1: confident teachers, far from the student
    return model


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def hand_loss(student, teachers, x, y, *, alpha, temperature, divergence="forward_kl", label_smoothing=0.0):
    """The objective by hand in float64; ``teachers`` are the ones used at this step (empty = no KD)."""
    s = student(x.double())
    p = _softmax(s)
    onehot = torch.nn.functional.one_hot(y, CLASSES).double()
    target = (1 - label_smoothing) * onehot + label_smoothing / CLASSES  # label smoothing as torch defines it
    ce = -(target * torch.log(p)).sum(-1).mean()
    if not teachers:
        return ce
    with torch.no_grad():
        p_t = torch.stack([_softmax(t(x.double()) / temperature) for t in teachers]).mean(0)  # ensemble: mean probs
    p_s = _softmax(s / temperature)
    if divergence == "forward_kl":
        kl = (p_t * (torch.log(p_t) - torch.log(p_s))).sum(-1)
    else:
        kl = (p_s * (torch.log(p_s) - torch.log(p_t))).sum(-1)
    return (1 - alpha) * ce + alpha * temperature**2 * kl.mean()


def reference(student, teachers, x, y, **kw) -> tuple[float, dict[str, torch.Tensor]]:
    ref = copy.deepcopy(student).double()
    loss = hand_loss(ref, [copy.deepcopy(t).double() for t in teachers], x, y, **kw)
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in ref.named_parameters()}


def run_step(student, teachers, micro_batches, step, *, alpha, temperature, divergence="forward_kl",
             selection="mean", label_smoothing=0.0, stop_step=100, accelerator=None):
    """One KDStep; returns (result, summed gradients, teacher calls as a list of teacher indices)."""
    model = copy.deepcopy(student)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    calls: list[int] = []
    for i, t in enumerate(teachers):
        t.register_forward_hook(lambda *_, i=i: calls.append(i))
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # one hook call per backward (micro-batch): sum them
        p.register_hook(lambda g, n=n: grads[n].add_(g))
    kd_step = KDStep(accelerator or Accelerator(cpu=True), model, opt, sched, teachers, alpha=alpha, temperature=temperature,
                     divergence=divergence, selection=selection, seed=SEED, stop_step=stop_step,
                     label_smoothing=label_smoothing, channels_last=False)
    return kd_step(micro_batches, step=step), grads, calls


def _split(x, y, parts: int):
    return [(x, y)] if parts == 1 else [(x[:3], y[:3]), (x[3:], y[3:])]


def _assert_close(result, grads, loss, ref_grads):
    assert result.loss.item() == pytest.approx(loss, rel=1e-5, abs=1e-7)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("temperature, alpha, smoothing", [(4.0, 0.5, 0.0), (1.0, 0.5, 0.0), (2.0, 0.9, 0.1)])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("parts", [1, 2])
def test_one_teacher_step_equals_the_hand_formula(temperature, alpha, smoothing, divergence, parts):
    """T 1 with no smoothing takes the shared-softmax shortcut in ``distillation_loss``; the others do not."""
    student, teacher = _linear(0), _linear(7, scale=3.0)
    x, y = _batch()
    kw = dict(alpha=alpha, temperature=temperature, divergence=divergence, label_smoothing=smoothing)
    loss, ref_grads = reference(student, [teacher], x, y, **kw)
    result, grads, calls = run_step(student, [teacher], _split(x, y, parts), step=0, **kw)
    _assert_close(result, grads, loss, ref_grads)
    assert calls == [0] * parts
    # the logged terms are the unweighted CE and KL means
    ce_only, _ = reference(student, [], x, y, alpha=alpha, temperature=temperature, label_smoothing=smoothing)
    assert result.ce.item() == pytest.approx(ce_only, rel=1e-5)
    kd = (loss - (1 - alpha) * ce_only) / (alpha * temperature**2)
    assert result.kd.item() == pytest.approx(kd, rel=1e-4, abs=1e-7)


class _TwoRanks(Accelerator):
    """This process posing as one of 2 ranks whose peer holds as many images: ``reduce`` doubles the count."""

    @property
    def num_processes(self) -> int:
        return 2

    def reduce(self, tensor, reduction="sum"):
        return tensor * 2


def test_global_image_count_of_several_ranks_stays_on_the_device(monkeypatch):
    """The step's denominator (images on all ranks) is reduced on the device and divides the loss there: no
    host read per optimizer step. Each rank's terms are its share of the global mean (half, with 2 equal ranks)."""
    student, teacher = _linear(0), _linear(7, scale=3.0)
    x, y = _batch()
    kw = dict(alpha=0.5, temperature=2.0)
    one, _, _ = run_step(student, [teacher], _split(x, y, 2), step=0, **kw)
    reads = []
    for name in ("item", "tolist", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(
            self, *a, **k))
    two, _, _ = run_step(student, [teacher], _split(x, y, 2), step=0, accelerator=_TwoRanks(cpu=True), **kw)
    assert reads == []
    monkeypatch.undo()
    torch.testing.assert_close(two.ce, one.ce / 2)
    torch.testing.assert_close(two.kd, one.kd / 2)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_mean_ensemble_distils_from_the_averaged_probabilities(divergence):
    student, teachers = _linear(0), [_linear(7, scale=3.0), _linear(8, scale=3.0)]
    x, y = _batch()
    kw = dict(alpha=0.5, temperature=4.0, divergence=divergence)
    loss, ref_grads = reference(student, teachers, x, y, **kw)
    result, grads, calls = run_step(student, teachers, _split(x, y, 2), step=0, selection="mean", **kw)
    _assert_close(result, grads, loss, ref_grads)
    assert calls == [0, 1, 0, 1]
    # averaging logits (or losses) instead of probabilities would be a different objective: make sure it differs
    avg_logits = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, CLASSES))
    with torch.no_grad():
        avg_logits[1].weight.copy_((teachers[0][1].weight + teachers[1][1].weight) / 2)
        avg_logits[1].bias.copy_((teachers[0][1].bias + teachers[1][1].bias) / 2)
    assert reference(student, [avg_logits], x, y, **kw)[0] != pytest.approx(loss, rel=1e-3)


def test_sample_ensemble_distils_from_the_teacher_of_the_step():
    student, teachers = _linear(0), [_linear(7, scale=3.0), _linear(8, scale=3.0)]
    x, y = _batch()
    kw = dict(alpha=0.5, temperature=4.0)
    chosen = {teacher_indices(s, 2, "sample", seed=SEED)[0]: s for s in range(20)}
    assert sorted(chosen) == [0, 1]  # both teachers get a step among the first 20
    for index, step in chosen.items():
        loss, ref_grads = reference(student, [teachers[index]], x, y, **kw)
        result, grads, calls = run_step(student, teachers, _split(x, y, 2), step=step, selection="sample", **kw)
        _assert_close(result, grads, loss, ref_grads)
        assert calls == [index, index]  # one teacher for both micro-batches of the step
        for t in teachers:
            t._forward_hooks.clear()


@pytest.mark.parametrize("step", [4, 9])
def test_from_the_stop_step_on_the_teacher_is_not_called_and_the_loss_is_ce(step):
    student, teacher = _linear(0), _linear(7, scale=3.0)
    x, y = _batch()
    loss, ref_grads = reference(student, [], x, y, alpha=0.5, temperature=4.0, label_smoothing=0.1)
    result, grads, calls = run_step(student, [teacher], _split(x, y, 2), step=step, alpha=0.5, temperature=4.0,
                                    label_smoothing=0.1, stop_step=4)
    _assert_close(result, grads, loss, ref_grads)
    assert calls == [] and result.kd is None


def test_step_before_the_stop_step_still_distils():
    """The boundary: step stop_step - 1 is the last KD step."""
    student, teacher = _linear(0), _linear(7, scale=3.0)
    x, y = _batch()
    loss, _ = reference(student, [teacher], x, y, alpha=0.5, temperature=4.0)
    result, _, calls = run_step(student, [teacher], [(x, y)], step=3, alpha=0.5, temperature=4.0, stop_step=4)
    assert calls == [0] and result.loss.item() == pytest.approx(loss, rel=1e-5)
