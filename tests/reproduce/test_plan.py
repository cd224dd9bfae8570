"""The plan line of hf-kd reproduce: which runs it counts as to train, its time estimate, and a quick look's size."""

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from hf_kd.cli import main as cli_main
from hf_kd.core.cache_format import MANIFEST
from hf_kd.reproduce.calibrate import calibration_size, estimate_seconds, time_step_kinds
from hf_kd.reproduce.jobs import RESULT, Context, log_plan, run_key
from hf_kd.reproduce.presets import CLM_TINY, scale_steps
from hf_kd.reproduce.protocol import Calibration, RunRecord, TeacherRecord, plan_jobs, select_variants
from tests.support.reproduce import TINY

CAL = Calibration(relative={"base": 1.0, "kd1": 2.0, "post": 1.0},
                  seconds_per_step={"base": 0.5, "kd1": 1.0, "post": 0.5}, seconds_per_evaluation=0.25)


def fake_backend(teacher_to_train: int = 0) -> SimpleNamespace:
    """Just what the plan reads: keys, the cached teacher, teacher budgets and evaluation intervals."""
    good = TeacherRecord("/cache/good", {"name": "good", "steps": 6})
    return SimpleNamespace(key={"preset": {"steps": TINY.steps, "learning_rate": 2e-3}, "corpus": "abc"}, preset=TINY,
                           peek_teacher=lambda n: good, teacher_steps_to_train=lambda n: teacher_to_train,
                           teacher_eval_every=lambda steps: 3)


def save_result(job, key: dict) -> None:
    Path(job.run_dir).mkdir(parents=True)
    (Path(job.run_dir) / RESULT).write_text(json.dumps({"key": key, "run": {}}))


def test_plan_counts_runs_whose_saved_key_differs_not_result_files(tmp_path, caplog):
    backend = fake_backend()
    ctx = Context(backend)
    jobs = plan_jobs(TINY, select_variants(TINY.frontier, ["kd_full"], False), 1, tmp_path)
    runs = {j.name: j for j in jobs if j.variant is not None}
    assert set(runs) == {"baseline", "kd_full", "baseline_0.5x"}
    teachers = {"good": backend.peek_teacher("good")}
    save_result(runs["baseline"], run_key(ctx, runs["baseline"], teachers))  # finished, same key: reused
    save_result(runs["kd_full"], run_key(ctx, runs["kd_full"], teachers))
    stale = run_key(ctx, runs["baseline_0.5x"], teachers)
    stale["preset"]["learning_rate"] = 1e-3  # a result file from other settings: it will be trained again
    save_result(runs["baseline_0.5x"], stale)
    with caplog.at_level(logging.INFO, logger="hf_kd.reproduce.jobs"):
        log_plan(jobs, ctx, CAL, workers=1)
    assert "to train now: 1 runs + 0 teacher steps" in caplog.text


def test_plan_estimate_counts_every_run_teacher_step_evaluation_and_the_calibration(tmp_path, caplog):
    backend = fake_backend(teacher_to_train=6)
    jobs = plan_jobs(TINY, select_variants(TINY.frontier, ["kd_stop50"], False), 1, tmp_path)
    sec = log_plan(jobs, Context(backend), CAL, workers=2, calibration_seconds=10.0)
    # nothing finished: baseline 8 steps, baseline_0.5x 4, kd_stop50 4 KD steps (2x) + 4 after the cutoff;
    # the 6-step teacher at baseline cost; evaluations every 2 steps (TINY.eval_every), the teacher's every 3
    steps = 8 + 4 + (4 * 2.0 + 4 * 1.0) + 6
    n_evals = 8 // 2 + 4 // 2 + 8 // 2 + 6 // 3
    assert sec == pytest.approx(10.0 + (steps * 0.5 + n_evals * 0.25) / 2)


def test_plan_counts_a_finished_cache_of_a_teacher_still_to_train_as_to_produce(tmp_path, caplog):
    backend = fake_backend()
    jobs = plan_jobs(TINY, select_variants(TINY.frontier, ["kd_full"], False, teacher_outputs="cached"), 1,
                     tmp_path)
    [cache] = [j.cache for j in jobs if j.variant is None and j.cache is not None]
    Path(cache.folder).mkdir(parents=True)
    (Path(cache.folder) / MANIFEST).write_text("{}")  # finished, from the teacher as it was
    cal = replace(CAL, relative={**CAL.relative, "cached": 1.0, "produce1": 0.5},
                  seconds_per_step={**CAL.seconds_per_step, "cached": 0.5, "produce1": 0.25})
    with caplog.at_level(logging.INFO, logger="hf_kd.reproduce.jobs"):
        log_plan(jobs, Context(backend), cal, workers=1)
        backend.peek_teacher = lambda n: None  # the teacher is retrained (another budget): its cache is stale
        log_plan(jobs, Context(backend), cal, workers=1)
    counts = [line.split("teacher steps + ")[1].split(" teacher-output")[0] for line in caplog.messages]
    assert counts == ["0", "1"]


def test_estimate_arithmetic():
    runs = [RunRecord("baseline", "student", 0, 10, "", [], None, "mean", 0, []),
            RunRecord("kd_stop50", "student", 0, 10, "", ["good"], 0.5, "mean", 0, [])]
    one = estimate_seconds(runs, teacher_steps=20, calibration=CAL, workers=1)
    assert one == pytest.approx((10 + 5 * 2.0 + 5 * 1.0 + 20) * 0.5)
    both = estimate_seconds(runs, 20, CAL, workers=2, evaluations=8, calibration_seconds=30.0)
    assert both == pytest.approx(30.0 + (one + 8 * 0.25) / 2)  # calibration is not shared by the workers


def test_quick_look_scales_evaluation_and_calibration_with_its_steps():
    quick = scale_steps(CLM_TINY, 24)
    k = 24 / CLM_TINY.steps
    assert quick.eval_every == int(CLM_TINY.eval_every * k)
    assert quick.good_teacher_steps == int(CLM_TINY.good_teacher_steps * k)
    assert quick.max_eval_samples is not None and quick.max_eval_samples < 119  # the built-in corpus has 119
    assert scale_steps(CLM_TINY, 240).max_eval_samples is None  # a longer run keeps the whole validation set
    assert scale_steps(replace(CLM_TINY, max_eval_samples=20), 24).max_eval_samples == 20  # never above a cap
    rounds, per_round = calibration_size(k)
    full_rounds, full_per_round = calibration_size(1.0)
    assert rounds * per_round < full_rounds * full_per_round / 2 and rounds >= 3  # a median of 3 at least


def test_cli_quick_look_hands_the_scaled_preset_and_calibration_to_the_protocol(tmp_path, monkeypatch):
    seen = {}

    class Backend:
        def __init__(self, preset, corpus, report_to):
            seen["preset"] = preset

    def run_protocol(backend, output_dir, seeds, only, **kwargs):
        seen.update(kwargs)
        return {"markdown": "", "plots": []}

    monkeypatch.setattr("hf_kd.reproduce.text.TextBackend", Backend)
    monkeypatch.setattr("hf_kd.reproduce.run.run_protocol", run_protocol)
    assert cli_main(["reproduce", "--task", "clm", "--steps", "24", "--output_dir", str(tmp_path / "q")]) == 0
    assert seen["preset"] == scale_steps(CLM_TINY, 24)
    assert seen["calibration_rounds"] == calibration_size(24 / CLM_TINY.steps)


def test_step_kinds_are_timed_while_the_other_workers_steps_run():
    """With workers beside it, the other workers' steps run while the kinds are timed (as in the real runs), and
    stop when the timing ends."""
    others_ran = threading.Event()
    other_steps = []

    def other(batch):
        other_steps.append(batch)
        others_ran.set()
        time.sleep(0.001)

    def timed(batch):  # a timed step sees the other steps running (in a thread: this one waits for them)
        assert others_ran.wait(timeout=30), "no other worker's step ran while timing"

    cal = time_step_kinds({"base": timed}, ["b"], ["base"], {}, rounds=2, steps_per_round=2, background=[other])
    assert set(cal.relative) == {"base"} and other_steps and set(other_steps) == {"b"}
    after = len(other_steps)
    time.sleep(0.05)
    assert len(other_steps) == after  # stopped with the timing
    alone = []
    time_step_kinds({"base": lambda b: alone.append(b)}, ["b"], ["base"], {}, rounds=2, steps_per_round=2)
    assert alone == ["b"] * 6  # warm-up round + 2 timed rounds of 2 steps
