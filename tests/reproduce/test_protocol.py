"""hf-kd reproduce: report math on synthetic runs, a miniature end-to-end run, the CLI."""

import json
import math
from dataclasses import replace

import pytest

from hf_kd.cli import main as cli_main
from hf_kd.reproduce.findings import findings
from hf_kd.reproduce.presets import MLM_TINY
from hf_kd.reproduce.report import TEXT, speedups
from hf_kd.reproduce.run import run_protocol
from hf_kd.reproduce.text import TextBackend
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import synthetic_run as _run


def test_speedups_and_findings_on_synthetic_runs():
    runs = [
        _run("baseline", [6.0, 5.5, 5.2, 5.0], 1.0),
        _run("baseline_0.5x", [6.0, 5.4], 1.0, role="frontier"),
        _run("baseline_2x", [6.0, 5.6, 5.3, 5.1, 4.9, 4.8, 4.7, 4.6], 1.0, role="frontier"),
        _run("kd_full", [5.6, 5.0, 4.9, 4.8], 1.5, forwards=40),  # reaches 5.0 at step 20 and stays
        _run("kd_stop50", [5.6, 5.0, 4.95, 4.7], 1.25, forwards=20),
        _run("kd_poor_teacher", [6.1, 5.7, 5.4, 5.2], 1.5, forwards=40),  # never reaches 5.0
        _run("ensemble_mean", [5.5, 5.0, 4.9, 4.8], 2.5, forwards=120),
        _run("ensemble_sample", [5.5, 5.0, 4.9, 4.85], 1.5, forwards=40),
    ]
    t = speedups(runs)
    # paper-style in steps: baseline needs 40 steps for 5.0, kd_full stays <= 5.0 from step 20
    assert t["kd_full"].paper["step"]["mean"] == pytest.approx(2.0)
    assert t["kd_full"].paper["gpu_hours"]["mean"] == pytest.approx(40 / 30)
    assert t["kd_poor_teacher"].paper["step"]["mean"] is None  # not reached
    # frontier in steps: (20, 5.4), (40, 5.0), (80, 4.6), interpolated in log cost; kd_full's final 4.8 needs
    # 40 * 2**0.5 steps / GPU-h there, kd_stop50's 4.7 needs 40 * 2**0.75
    assert t["kd_full"].frontier["step"]["mean"] == pytest.approx(40 * 2**0.5 / 40)
    assert t["kd_full"].frontier["gpu_hours"]["mean"] == pytest.approx(40 * 2**0.5 / 60)
    assert t["kd_stop50"].frontier["gpu_hours"]["mean"] == pytest.approx(40 * 2**0.75 / 50)
    # poor teacher final 5.2, half-way between 20 and 40 steps in quality -> 20 * 2**0.5 steps; the run used 40
    assert t["kd_poor_teacher"].frontier["step"]["mean"] == pytest.approx(20 * 2**0.5 / 40)
    f = {x["finding"].split()[0]: x for x in findings(t, TEXT)}
    assert all(x["verdict"] in ("inconclusive", "not drawn") for x in f.values())  # one seed never decides
    assert "1 seed" in t["kd_stop50"].verdict_reason


@pytest.mark.slow
def test_miniature_protocol_end_to_end_and_teacher_cache(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    p = replace(MLM_TINY, vocab_size=200, max_seq_length=32, batch_size=4, steps=8, eval_every=4,
                good_teacher_steps=12, second_teacher_steps=8, poor_teacher_steps=2, frontier=(0.5,))
    res = run_protocol(TextBackend(p, str(corpus)), str(tmp_path / "out"), seeds=1, calibrate=False)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in saved["runs"]} == {"baseline", "kd_full", "kd_stop25", "kd_stop50",
                                                     "kd_poor_teacher", "ensemble_mean", "ensemble_sample",
                                                     "baseline_0.5x"}
    fwd = {r["variant"]: r["teacher_forwards"] for r in saved["runs"]}
    assert fwd["baseline"] == 0 and fwd["kd_full"] == 8 and fwd["kd_stop25"] == 2 and fwd["kd_stop50"] == 4
    assert fwd["ensemble_mean"] == 3 * 8 and fwd["ensemble_sample"] == 8
    assert len(saved["findings"]) == 4 and all("evidence" in f for f in saved["findings"])
    assert (out / "quality_vs_gpu_hours.png").stat().st_size > 1000
    assert "| kd_full |" in (out / "results.md").read_text()
    assert res["summary"]["baseline"]["paper_speedup_step"]["mean"] == pytest.approx(1.0)
    assert res["regime"]["unigram_entropy"] > 0 and "unigram entropy" in (out / "results.md").read_text()
    cached = sorted((tmp_path / "cache" / "teachers").iterdir())
    assert len(cached) == 3 and all((c / "teacher.json").is_file() for c in cached)
    stamps = [(c / "teacher.json").stat().st_mtime_ns for c in cached]
    run_protocol(TextBackend(p, str(corpus)), str(tmp_path / "out2"), seeds=1, only=["kd_full"], calibrate=False)
    assert [(c / "teacher.json").stat().st_mtime_ns for c in cached] == stamps  # recycled, not retrained


def test_cli_prints_real_scale_protocol(capsys):
    assert cli_main(["reproduce", "--preset", "bert-base-c4", "--output_dir", "/tmp/x"]) == 0
    out = capsys.readouterr().out
    assert "allenai/c4" in out and "ds_configs/zero2.json" in out and "glue_eval.sweep" in out


@pytest.mark.parametrize("argv, needle", [(["reproduce", "--task", "audio"], "task='audio' is invalid"),
                                          (["reproduce", "--seeds", "0"], "--seeds 0 is invalid"),
                                          (["reproduce", "--preset", "huge"], "preset='huge' is invalid")])
def test_cli_bad_input(argv, needle, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_vision_protocol_miniature(tmp_path, monkeypatch, fresh_accelerate_state):
    from hf_kd.reproduce.presets import VisionPreset
    from hf_kd.reproduce.vision import VisionBackend

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    p = VisionPreset(steps=4, eval_every=2, batch_size=16, good_teacher_steps=4, second_teacher_steps=2,
                     poor_teacher_steps=1, frontier=(0.5,))
    res = run_protocol(VisionBackend(p), str(tmp_path / "out"), only=["kd_full", "ensemble_sample", "ensemble_mean"],
                       calibrate=False)
    fwd = {r["variant"]: r["teacher_forwards"] for r in res["runs"]}
    assert fwd == {"baseline": 0, "baseline_0.5x": 0, "kd_full": 4, "ensemble_sample": 4, "ensemble_mean": 12}
    assert res["task"] == "vision" and res["metric"]["key"] == "top1" and res["metric"]["higher_is_better"] is True
    assert (tmp_path / "out" / "quality_vs_step.png").is_file()
    assert "final top-1 accuracy" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_vision_reproduce_prints_calibrated_cost_verdicts_and_reuses_finished_runs(tmp_path, monkeypatch, capsys,
                                                                                   fresh_accelerate_state):
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    argv = ["reproduce", "--task", "vision", "--seeds", "1", "--only", "kd_stop50", "--output_dir",
            str(tmp_path / "out"), "--override", "steps=4", "eval_every=2", "batch_size=16", "good_teacher_steps=4",
            "frontier=0.5"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "Verdicts use the budget-frontier speed-up on the **calibrated cost (baseline steps)** axis" in out
    header = next(line for line in out.splitlines() if line.startswith("| variant |"))
    assert "| calibrated cost |" in header and "frontier (calibrated cost)" in header
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["calibration"]["kinds"] == ["base", "kd1", "post"] == sorted(saved["calibration"]["relative"])
    # the good teacher is a resnet18 like the students: the calibration timed one of that size
    assert saved["calibration"]["teacher_parameters"]["kd1"] > 1e6
    result = tmp_path / "out" / "runs" / "kd_stop50-seed0" / "run_result.json"
    stamp = result.stat().st_mtime_ns
    assert cli_main(argv) == 0  # rerun: every run reused
    assert result.stat().st_mtime_ns == stamp


def test_seeds_give_mean_and_spread():
    runs = [_run("baseline", [6.0, 5.0], 1.0, seed=s) for s in (0, 1)]
    runs += [_run("kd_full", [5.0, 4.9], 1.0, seed=0), _run("kd_full", [5.5, 5.0], 1.0, seed=1)]
    t = speedups(runs)
    # seed 0 stays <= 5.0 from step 10 (2.0x), seed 1 from step 20 (1.0x): speed-ups are summarised in log space,
    # geometric mean sqrt(2 * 1) and the sample sd of (ln 2, ln 1)
    ps = t["kd_full"].paper["step"]
    assert (ps["mean"], ps["std"], ps["n"], ps["values"]) == (pytest.approx(2**0.5), pytest.approx(math.log(2) / 2**0.5),
                                                              2, [2.0, 1.0])


@pytest.mark.slow
def test_vision_run_interrupted_after_a_checkpoint_resumes_to_the_same_end(tmp_path, monkeypatch,
                                                                          fresh_accelerate_state):
    from hf_kd.reproduce.presets import VisionPreset
    from hf_kd.reproduce.vision import VisionBackend

    class Stopping(VisionBackend):
        """Ctrl-C in the kd_full run's third training step (after its step-2 checkpoint), once."""

        stopped = False
        starts: list[int] = []  # the step each kd_full run starts from

        def watch(self, run):
            if "kd_full" in run.args.output_dir:
                Stopping.starts.append(run.state.step)
            if "kd_full" in run.args.output_dir and not Stopping.stopped:
                calls = []

                def stop(module, *_):
                    calls.append(module.training)  # training forwards: one per step (evaluations run in eval mode)
                    if module.training and sum(calls) == 3:
                        Stopping.stopped = True
                        raise KeyboardInterrupt

                run.model.register_forward_hook(stop)

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    p = VisionPreset(steps=4, eval_every=1, batch_size=16, good_teacher_steps=2, frontier=(0.5,))
    whole = run_protocol(VisionBackend(p), str(tmp_path / "whole"), only=["kd_full"], calibrate=False)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(Stopping(p), str(tmp_path / "stopped"), only=["kd_full"], calibrate=False)
    run_dir = tmp_path / "stopped" / "runs" / "kd_full-seed0"
    assert (run_dir / "checkpoint-2").is_dir() and not (run_dir / "run_result.json").exists()
    resumed = run_protocol(Stopping(p), str(tmp_path / "stopped"), only=["kd_full"], calibrate=False)
    a, b = ({r["variant"]: r for r in res["runs"]}["kd_full"] for res in (whole, resumed))
    assert [(e["step"], e["top1"], e["eval_loss"]) for e in a["log_history"]] == \
        [(e["step"], e["top1"], e["eval_loss"]) for e in b["log_history"]]
    assert a["teacher_forwards"] == b["teacher_forwards"] == 4
    assert Stopping.starts == [0, 2]  # the rerun resumed from the step-2 checkpoint
