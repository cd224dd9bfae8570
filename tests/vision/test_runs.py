"""End-to-end runs of run_scripts/run_resnet_kd.py on the embedded digits (resnet18 at 16x16, a few CPU steps).

    python -m pytest tests/test_vision_*.py -x -q
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

import hf_kd.vision.loop as vision_loop
from hf_kd.core.checkpointing import checkpoint_problem
from hf_kd.core.cli_utils import run_cli
from hf_kd.core.schedule import teacher_indices
from hf_kd.vision.checkpoints import STATE_MARKER
from run_scripts import run_resnet_kd
from tests.support import REPO

TINY = ["--model", "resnet18", "--image_size", "16", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "128", "--learning_rate", "0.05", "--seed", "0"]
COST_KEYS = {"step", "epoch", "gpu_hours", "teacher_time_fraction", "train_images_per_second", "top1", "top5",
             "kd_weight", "task_loss", "kd_loss", "num_eval_images"}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _run(out: Path, *flags: str) -> dict:
    result = run_resnet_kd.main(["--output_dir", str(out), *TINY, *flags])
    AcceleratorState._reset_state(reset_partial_state=True)  # the next in-process run starts from scratch
    GradientState._reset_state()
    return result


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(out / "model.safetensors")).items() if "running" not in k
            and "num_batches" not in k}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vision") / "baseline"
    _run(out, "--max_steps", "4", "--eval_steps", "2", "--checkpointing_steps", "2")
    return out


def test_baseline_writes_checkpoints_metrics_and_model(baseline):
    assert (baseline / "checkpoint-2").is_dir() and (baseline / "checkpoint-4").is_dir()
    meta = json.loads((baseline / "config.json").read_text())
    assert meta["architecture"] == "resnet18" and meta["num_classes"] == 10
    rows = _rows(baseline)
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert COST_KEYS <= r.keys()
        assert r["num_eval_images"] == 360 and r["kd_weight"] == 0.0 and r["kd_loss"] is None
        assert r["teacher_time_fraction"] == 0.0 and r["gpu_hours"] > 0 and 0 <= r["top1"] <= r["top5"] <= 1
    assert rows[1]["gpu_hours"] > rows[0]["gpu_hours"]


def test_non_empty_output_dir_is_refused(baseline, capsys):
    assert run_cli(lambda: run_resnet_kd.main(["--output_dir", str(baseline), *TINY, "--max_steps", "1"])) == 2
    assert "is not empty" in capsys.readouterr().err


def _count_teacher_calls(monkeypatch) -> list[int]:
    """Patch teacher loading so every teacher forward appends that teacher's index."""
    calls: list[int] = []
    original = vision_loop.load_teachers

    def loading(*args, **kwargs):
        teachers, names = original(*args, **kwargs)
        for i, t in enumerate(teachers):
            t.register_forward_hook(lambda *_, i=i: calls.append(i))
        return teachers, names

    monkeypatch.setattr(vision_loop, "load_teachers", loading)
    return calls


@pytest.mark.parametrize("selection", ["mean", "sample"])
def test_kd_run_calls_teachers_only_before_the_cutoff(baseline, tmp_path, monkeypatch, selection):
    calls = _count_teacher_calls(monkeypatch)
    out = tmp_path / "kd"
    _run(out, "--max_steps", "5", "--eval_steps", "3", "--gradient_accumulation_steps", "2",
         "--teacher_checkpoint", str(baseline), "--teacher_checkpoint", str(baseline / "model.safetensors"),
         "--teacher_model", "resnet18", "--teacher_model", "resnet18",
         "--kd_teacher_selection", selection, "--kd_stop_steps", "3", "--kd_alpha", "0.5")
    per_step = [teacher_indices(s, 2, selection, seed=0) for s in range(3)]
    # both micro-batches of a step use the step's teacher(s); nothing from step 3 on
    assert calls == [i for ids in per_step for _ in range(2) for i in ids]
    if selection == "sample":
        assert all(len(ids) == 1 for ids in per_step)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [3, 5]
    assert rows[0]["kd_weight"] == 0.5 and rows[0]["kd_loss"] > 0 and rows[0]["teacher_time_fraction"] > 0
    assert rows[1]["kd_weight"] == 0.0 and rows[1]["kd_loss"] is None and rows[1]["teacher_time_fraction"] == 0.0


def test_resume_continues_and_matches_an_uninterrupted_run(baseline, tmp_path, monkeypatch):
    """Batch 128 makes 11 batches per epoch (6 steps with accumulation 2): the run crosses an epoch boundary
    after the resume point and the KD cutoff (sampled teachers) falls after it too."""
    flags = ["--max_steps", "8", "--per_device_train_batch_size", "128", "--gradient_accumulation_steps", "2",
             "--checkpointing_steps", "3", "--eval_steps", "3", "--teacher_checkpoint", str(baseline),
             "--teacher_checkpoint", str(baseline), "--kd_teacher_selection", "sample", "--kd_stop_steps", "5"]
    full = tmp_path / "full"
    _run(full, *flags)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(full / "metrics.jsonl", resumed)  # rows past the checkpoint (6, 8) must be redone, not duplicated
    calls = _count_teacher_calls(monkeypatch)
    _run(resumed, *flags, "--resume_from_checkpoint", "latest")
    assert len(calls) == 2 * 2  # steps 3 and 4 only, one sampled teacher, two micro-batches each
    a, b = _weights(full), _weights(resumed)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"resumed weights differ from the uninterrupted run by {worst}"
    full_rows, resumed_rows = _rows(full), _rows(resumed)
    assert [r["step"] for r in resumed_rows] == [3, 6, 8] == [r["step"] for r in full_rows]
    assert resumed_rows[1]["gpu_hours"] > resumed_rows[0]["gpu_hours"]  # continued from the checkpoint, not reset
    for x, y in zip(resumed_rows[1:], full_rows[1:]):
        assert x["top1"] == pytest.approx(y["top1"]) and x["task_loss"] == pytest.approx(y["task_loss"], rel=1e-4)


def test_diverging_run_stops_with_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "nan"
    argv = ["--output_dir", str(out), *TINY, "--max_steps", "4", "--learning_rate", "1e12", "--checkpointing_steps", "1"]
    assert run_cli(lambda: run_resnet_kd.main(argv)) == 1
    assert "the training loss became" in capsys.readouterr().err
    for ckpt in out.glob("checkpoint-*"):  # whatever was saved before the loss diverged is usable
        assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "model.safetensors")).values()), ckpt.name


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_counts_each_validation_image_once_and_matches_one_process(tmp_path):
    """2 processes x 1 micro-batch of 16 = 1 process x 2 micro-batches of 16: same images, same BatchNorm
    batches, so equal weights iff the loss is normalised by the global batch and scaled by the process count."""
    two = tmp_path / "two"
    # `accelerate launch --cpu` starts ONE process unless mpirun is configured; torchrun + ACCELERATE_USE_CPU gives
    # accelerate's MULTI_CPU (gloo) with 2 real ranks.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "run_scripts" / "run_resnet_kd.py"), "--output_dir", str(two), *TINY,
           "--max_steps", "3", "--per_device_eval_batch_size", "64", "--checkpointing_steps", "1",
           "--save_total_limit", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(two)
    assert rows and all(r["num_eval_images"] == 360 for r in rows)  # 360 = 2 x 64 x 3 - 24 padded duplicates
    # staged checkpoints with 2 ranks: both ranks' RNG files are in the published folder, rotation keeps one
    assert [p.name for p in two.glob("checkpoint-*")] == ["checkpoint-3"] and not list(two.glob(".partial-*"))
    assert checkpoint_problem(two / "checkpoint-3", STATE_MARKER) is None
    marker = json.loads((two / "checkpoint-3" / STATE_MARKER).read_text())
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= marker["files"].keys() and marker["num_processes"] == 2
    assert (two / "README.md").is_file() and (two / "config.json").is_file()
    one = tmp_path / "one"
    _run(one, "--max_steps", "3", "--gradient_accumulation_steps", "2")
    a, b = _weights(one), _weights(two)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"2-process weights differ from 1 process with accumulation by {worst}"
