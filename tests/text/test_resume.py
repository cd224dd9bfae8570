"""Crash and resume: kill -9 at random points, resume, and end with exactly the uninterrupted run.

Also: a half-written checkpoint is never resumed from, and a non-finite loss stops (or skips) cleanly.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_kd.core.checkpointing import checkpoint_problem, latest_complete_checkpoint
from hf_kd.core.schedule import teacher_indices
from tests.support.scripts import (
    attempt,
    build_env,
    error_lines,
    run_script,
    script_args,
    step_of,
    tiny_model,
    truncate,
)

SEED = 7
MAX_STEPS = 30
SAVE_STEPS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = build_env(tmp_path_factory.mktemp("resume_env"))
    for seed in (1, 2):
        tiny_model(env.inputs / f"teacher{seed}", env.vocab_size, seed=seed)
    return env


@pytest.fixture(autouse=True)
def _cache(monkeypatch, env):
    monkeypatch.setenv("HF_KD_CACHE", str(env.cache))


def kd_run_args(env, out: Path, *extra: str) -> list[str]:
    """Two teachers sampled per step, KD for the first half, dropout on (tiny preset), a checkpoint every 3 steps."""
    return script_args(env, out, "--max_train_samples", "40", "--logging_steps", "1", "--save_strategy", "steps",
                       "--save_steps", str(SAVE_STEPS), "--seed", str(SEED), "--kd_teacher_selection", "sample",
                       "--kd_stop_ratio", "0.5", "--kd_alpha", "0.5", "--teacher_model_name_or_path",
                       str(env.inputs / "teacher1"), str(env.inputs / "teacher2"), *extra, max_steps=MAX_STEPS)


def training_lines(state: dict) -> list[dict]:
    return [e for e in state["log_history"] if "loss" in e]


@pytest.mark.slow
def test_kill_and_resume_three_times_equals_uninterrupted_run(env, tmp_path, capsys):
    ref, out = tmp_path / "reference", tmp_path / "resumed"
    rc, err = run_script(kd_run_args(env, ref), capsys)
    assert rc == 0, err[-3000:]

    rng, interval, walls, resume_points = random.Random(SEED), None, [], []
    resume_forms = [None, "path", "latest", "latest"]  # fresh start, then three resumes
    for i, form in enumerate(resume_forms):
        extra: list[str] = []
        resumed_at = 0
        if form is not None:
            ckpt = latest_complete_checkpoint(out)
            resumed_at = step_of(ckpt)
            resume_points.append((resumed_at, json.loads((Path(ckpt) / "trainer_state.json").read_text())))
            extra = ["--resume_from_checkpoint", ckpt if form == "path" else "latest"]
        last = i == len(resume_forms) - 1
        killed, wall, interval = attempt(env, kd_run_args(env, out, *extra), out, resumed_at, None if last else rng,
                                         interval, tmp_path / f"attempt{i}.log")
        assert killed != last, f"attempt {i} {'was killed' if killed else 'finished early'}"
        walls.append(wall)

    # final weights: identical to the uninterrupted run (dropout, masking, data order, teacher choice restored)
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"max weight difference {worst}"

    ref_lines = training_lines(json.loads((ref / "trainer_state.json").read_text()))
    lines = training_lines(json.loads((out / "trainer_state.json").read_text()))
    assert [e["step"] for e in lines] == list(range(1, MAX_STEPS + 1))  # every step once: nothing lost or doubled
    for key in ("kd_weight", "kd_teacher"):
        assert [e.get(key) for e in lines] == [e.get(key) for e in ref_lines], key
    stop = MAX_STEPS // 2
    assert [e["kd_weight"] for e in lines] == [0.5] * stop + [0.0] * (MAX_STEPS - stop)
    expected_teachers = [teacher_indices(s - 1, 2, "sample", SEED)[0] for s in range(1, stop + 1)]
    assert [e["kd_teacher"] for e in lines[:stop]] == expected_teachers and len(set(expected_teachers)) == 2
    assert [e["loss"] for e in lines] == pytest.approx([e["loss"] for e in ref_lines], rel=1e-6)
    results = json.loads((out / "all_results.json").read_text())
    assert results["kd_stop_step"] == json.loads((ref / "all_results.json").read_text())["kd_stop_step"] == stop

    # gpu_hours: continued from each checkpoint (never reset), and no more than the wall-clock actually spent
    hours = [e["gpu_hours"] for e in lines]
    assert hours == sorted(hours)
    for step, state in resume_points:
        saved = training_lines(state)[-1]["gpu_hours"]
        assert lines[step]["gpu_hours"] >= saved  # the resumed run's first line (step + 1)
    assert 0 < results["gpu_hours"] < sum(walls) / 3600
    assert not list(out.glob(".partial-*"))  # staging folders of killed saves were cleaned up


# -- half-written checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_checkpoints(env, tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoint-1 and checkpoint-2 (copy it before damaging anything)."""
    from hf_kd.core.cli_utils import run_cli
    from run_scripts.run_mlm_kd import main

    out = tmp_path_factory.mktemp("two_checkpoints") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_KD_CACHE", str(env.cache))
        assert run_cli(lambda: main(script_args(env, out, "--save_strategy", "steps", "--save_steps", "1"))) == 0
    return out


@pytest.mark.parametrize("damage", ["no_trainer_state", "truncated_weights", "staging_folder", "bad_json"])
def test_latest_skips_a_half_written_checkpoint(env, two_checkpoints, tmp_path, capsys, caplog, damage):
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    good = out / "checkpoint-2"
    assert checkpoint_problem(good) is None
    newer = out / ("checkpoint-3" if damage != "staging_folder" else ".partial-checkpoint-3/checkpoint-3")
    shutil.copytree(good, newer)
    if damage == "no_trainer_state":
        (newer / "trainer_state.json").unlink()
    elif damage == "truncated_weights":
        truncate(newer / "model.safetensors")
    elif damage == "bad_json":
        (newer / "trainer_state.json").write_text('{"log_history": [')
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        assert latest_complete_checkpoint(out) == str(good)
    if damage != "staging_folder":
        assert any("skipping incomplete checkpoint" in r.getMessage() for r in caplog.records)
        # an explicit path to the broken one is refused in one line, naming it
        rc, err = run_script(script_args(env, out, "--resume_from_checkpoint", str(newer)), capsys)
        assert rc == 2 and "is not a complete checkpoint" in error_lines(err)[0] and str(newer) in err


def test_save_is_staged_then_renamed(env, tmp_path, capsys, monkeypatch):
    """While the Trainer writes a checkpoint, no ``checkpoint-N`` folder exists; a crash leaves only staging."""
    import hf_kd.core.checkpointing as ck

    seen = []
    real_publish = ck.publish

    def crash_on_second(staged: Path, final: Path) -> None:
        seen.append((staged.exists(), final.exists(), (staged / "trainer_state.json").is_file()))
        if len(seen) == 2:
            raise KeyboardInterrupt  # as if killed just before the rename
        real_publish(staged, final)

    monkeypatch.setattr(ck, "publish", crash_on_second)
    out = tmp_path / "out"
    rc, err = run_script(script_args(env, out, "--save_strategy", "steps", "--save_steps", "1"), capsys)
    assert rc == 130 and err.strip().splitlines()[-1] == (  # Ctrl-C's one line names the intact checkpoint
        "interrupted at step 2; rerun the same command with --resume_from_checkpoint latest to resume from "
        "checkpoint-1")
    assert seen == [(True, False, True), (True, False, True)]
    assert (out / ".partial-checkpoint-2" / "checkpoint-2" / "trainer_state.json").is_file()
    assert latest_complete_checkpoint(out) == str(out / "checkpoint-1")


def test_rotation_still_works(env, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_script(script_args(env, out, "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit",
                                     "1", max_steps=3), capsys)
    assert rc == 0, err[-3000:]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-3"]


# -- non-finite loss -------------------------------------------------------------------------------------------
def nan_at_step(monkeypatch, step: int) -> None:
    """Make the student's logits NaN in the training forward of optimizer step ``step`` (0-based, GA = 1)."""
    import hf_kd.text.pretrain as pretrain

    real_build = pretrain.build_student

    def build(*args, **kwargs):
        student = real_build(*args, **kwargs)
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == step + 1:
                    output.logits = output.logits * float("nan")
            return output

        student.register_forward_hook(hook)
        return student

    monkeypatch.setattr(pretrain, "build_student", build)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    nan_at_step(monkeypatch, 4)
    rc, err = run_script(script_args(env, out, "--save_strategy", "steps", "--save_steps", "2", max_steps=8), capsys)
    assert rc == 1
    (line,) = error_lines(err)
    assert "training loss is nan at step 4" in line and f"{out}/checkpoint-4, is intact" in line
    assert "--on_nonfinite_loss skip" in line and "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint_problem(out / "checkpoint-4") is None and not (out / "all_results.json").exists()


def test_huge_learning_rate_diverges_into_a_one_line_error(env, tmp_path, capsys):
    rc, err = run_script(script_args(env, tmp_path / "out", "--learning_rate", "1e30", max_steps=6), capsys)
    assert rc == 1
    (line,) = error_lines(err)
    assert "at step" in line and "no checkpoint had been saved" in line


def test_nonfinite_loss_skip_drops_exactly_that_update(env, tmp_path, capsys, monkeypatch, caplog):
    out = tmp_path / "out"
    nan_at_step(monkeypatch, 2)
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        rc, err = run_script(script_args(env, out, "--save_strategy", "steps", "--save_steps", "1",
                                         "--on_nonfinite_loss", "skip", max_steps=4), capsys)
    assert rc == 0, err[-3000:]
    assert any("training loss is nan at step 2: update skipped" in r.getMessage() for r in caplog.records)
    w = {s: load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2, 3, 4)}
    assert all(torch.isfinite(t).all() for t in w[4].values())
    assert all(torch.equal(w[2][k], w[3][k]) for k in w[2])  # step 2 (-> checkpoint-3) changed nothing
    assert not all(torch.equal(w[1][k], w[2][k]) for k in w[1])
    assert not all(torch.equal(w[3][k], w[4][k]) for k in w[3])
