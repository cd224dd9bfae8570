"""Vision KD pieces without a training run: data, models/teachers, flags, LR schedule, step normalisation."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from hf_kd.core.cli_utils import UserError, run_cli
from hf_kd.core.teachers import ModelLoadError, TeacherLoadError
from hf_kd.vision.data import EpochShuffleSampler, VisionDataArguments, load_digits_splits
from hf_kd.vision.loop import KDStep
from hf_kd.vision.setup import (
    VisionModelArguments,
    VisionTrainingArguments,
    build_model,
    load_teacher,
    lr_factor,
    resolve_stop_step,
    save_model_dir,
)
from run_scripts import run_resnet_kd

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_digits_split_is_stratified_and_fixed():
    a, b = load_digits_splits(16, 0.2), load_digits_splits(16, 0.2)
    assert (len(a.train), len(a.val), a.num_classes) == (1437, 360, 10)
    assert a.train[0][0].shape == (3, 16, 16)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])  # same validation images on every run
    assert torch.bincount(a.val.tensors[1], minlength=10).min() >= 35  # every class held out in proportion


def test_epoch_sampler_is_a_pure_function_of_seed_and_epoch():
    s = EpochShuffleSampler(50, seed=3)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert sorted(first) == list(range(50)) and first != second
    s2 = EpochShuffleSampler(50, seed=3)
    s2.set_epoch(1)
    assert list(s2) == second


def test_unknown_architecture_is_one_line_error():
    with pytest.raises(ValueError, match="unknown architecture 'resnet51'.*did you mean"):
        build_model("resnet51", 10)


def test_teacher_checks(tmp_path):
    model = build_model("resnet18", 7, channels_last=False)
    run_dir = tmp_path / "run"
    save_model_dir(model.state_dict(), run_dir, "resnet18", 7)
    assert isinstance(load_teacher(str(run_dir), None, 7), torch.nn.Module)
    with pytest.raises(TeacherLoadError, match="predicts 7 classes but the data has 10"):
        load_teacher(str(run_dir), None, 10)
    with pytest.raises(TeacherLoadError, match="is a resnet18.*says resnet34"):
        load_teacher(str(run_dir), "resnet34", 7)
    with pytest.raises(TeacherLoadError, match="does not exist"):
        load_teacher(str(tmp_path / "nope.safetensors"), "resnet18", 7)
    with pytest.raises(TeacherLoadError, match="does not fit a resnet34"):
        load_teacher(str(run_dir / "model.safetensors"), "resnet34", 7)
    torch.save(model.state_dict(), tmp_path / "tv.pth")  # a torchvision-style weights file
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):  # the weights file, whoever loads it
        load_teacher(str(tmp_path / "tv.pth"), "resnet18", 7)
    assert isinstance(load_teacher(str(tmp_path / "tv.pth"), "resnet18", 7, allow_pickle=True), torch.nn.Module)
    with pytest.raises(UserError, match="pairwise"):
        VisionModelArguments(teacher_model=["resnet18", "resnet34"], teacher_checkpoint=["a"])


@pytest.mark.parametrize("flags, message", [
    (["--kd_alpha", "1.5"], "kd_alpha=1.5 is invalid"),
    (["--kd_teacher_selection", "vote"], "kd_teacher_selection='vote' is invalid"),
    (["--kd_divergence", "js"], "kd_divergence='js' is invalid"),
    (["--lr_scheduler_type", "linear"], "lr_scheduler_type='linear' is invalid"),
    (["--train_dir", "x"], "--train_dir and --val_dir go together"),
    (["--model", "resnet51"], "unknown architecture"),
    (["--teacher_checkpoint", "/nonexistent/teacher"], "does not exist"),
])
def test_bad_flags_give_one_line_errors(tmp_path, capsys, flags, message):
    argv = ["--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--image_size", "16", *flags]
    assert run_cli(lambda: run_resnet_kd.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_tracker_is_a_one_line_error_naming_the_extra(monkeypatch):
    import hf_kd.core.trackers as trackers

    monkeypatch.setattr(trackers, "_installed", lambda module: False)  # as on a machine without tensorboard
    with pytest.raises(ValueError, match=r'--report_to tensorboard needs the tensorboard package.*hf-kd\[tensorboard\]'):
        VisionTrainingArguments(output_dir="x", report_to="tensorboard")


def test_without_torchvision_the_script_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    assert run_cli(lambda: run_resnet_kd.main(["--output_dir", str(tmp_path / "o")])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: the vision task needs torchvision, which is not installed; run `pip install '
                   '"hf-kd[vision]"` (from a clone: pip install -e ".[vision]")']
    assert not (tmp_path / "o").exists()


def test_stop_step_flags_follow_the_text_trainer():
    args = VisionTrainingArguments(output_dir="x", kd_stop_ratio=0.5)
    assert resolve_stop_step(args, 9) == 5
    both = VisionTrainingArguments(output_dir="x", kd_stop_ratio=0.5, kd_stop_steps=4)
    with pytest.raises(ValueError, match="disagree"):
        resolve_stop_step(both, 9)


def test_lr_schedule_shapes():
    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(100, 100, warmup_steps=10) == pytest.approx(0.0)
    assert [lr_factor(s, 100, kind="step", milestones=[30, 60]) for s in (29, 30, 60)] == pytest.approx(
        [1.0, 0.1, 0.01])


def _one_step(micro_batches, teachers=()):
    """Gradient of one KDStep on a BN-free model (BatchNorm would make micro-batch splits differ)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    acc = Accelerator(cpu=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, read the gradient
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = KDStep(acc, model, opt, sched, teachers, alpha=0.5, temperature=2.0, stop_step=10,
                  label_smoothing=0.1, channels_last=False)
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # tensor hooks fire once per backward (micro-batch): sum them
        p.register_hook(lambda g, n=n: grads[n].add_(g))
    result = step(micro_batches, step=0)
    return grads, result


def test_step_loss_does_not_depend_on_micro_batch_split():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g)
    torch.manual_seed(2)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    whole, r1 = _one_step([(x, y)], [teacher])
    split, r2 = _one_step([(x[:3], y[:3]), (x[3:], y[3:])], [teacher])
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-6), name
    assert r1.ce.item() == pytest.approx(r2.ce.item(), rel=1e-6)
    assert r1.kd.item() == pytest.approx(r2.kd.item(), rel=1e-6)
    assert r1.num_images == r2.num_images == 8


def test_data_args_defaults_pick_digits():
    assert VisionDataArguments().uses_digits


def test_help_renders(capsys):
    with pytest.raises(SystemExit) as e:
        run_resnet_kd.main(["--help"])
    assert e.value.code == 0 and "--teacher_checkpoint" in capsys.readouterr().out
