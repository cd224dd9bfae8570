"""hf-kd reproduce orchestration: finished runs are reused, interrupted ones resume, names are checked, --launch resumes."""

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from hf_kd.cli import main as cli_main
from hf_kd.reproduce.run import run_protocol
from hf_kd.reproduce.scale import bert_base_c4, commands
from hf_kd.reproduce.text import TextBackend
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import TINY, Interrupt, SpyBackend


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return TINY, str(write_tiny_corpus(tmp_path, monkeypatch))


@pytest.mark.slow
def test_interrupted_and_rerun_trains_only_what_was_left(tiny, tmp_path):
    p, corpus = tiny
    out = str(tmp_path / "out")
    spy = SpyBackend(p, corpus, interrupt=Interrupt("kd_full", 6))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during kd_full, after its checkpoint at step 4
        run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained[0].startswith("good-") and spy.trained[1:] == ["baseline-seed0", "baseline_0.5x-seed0",
                                                                      "kd_full-seed0"]
    run_dir = Path(out) / "runs" / "kd_full-seed0"
    assert (run_dir / "checkpoint-4").is_dir() and not (run_dir / "run_result.json").exists()

    spy = SpyBackend(p, corpus)
    res = run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained == ["kd_full-seed0"]  # the teacher and the baselines were not trained again
    assert len(spy.resumed) == 1 and spy.resumed[0].endswith("checkpoint-4")
    kd = next(r for r in res["runs"] if r["variant"] == "kd_full")
    assert kd["teacher_forwards"] == 8  # 4 before the interruption + 4 after the resume
    assert [e["step"] for e in kd["log_history"] if "eval_loss" in e] == [2, 4, 6, 8]

    spy.trained.clear()
    run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained == []  # everything finished: nothing is retrained

    # A checkpoint left by a run with other settings is not resumed from (it would mix two schedules).
    spy.resumed.clear()
    (run_dir / "run_result.json").unlink()
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "run_key.json").write_text("{}")
    run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained == ["kd_full-seed0"] and spy.resumed == [None]
    other = SpyBackend(replace(p, steps=10), corpus)
    run_protocol(other, out, seeds=1, only=["kd_full"], calibrate=False)
    assert "baseline-seed0" in other.trained  # other settings: a finished run is not reused for them


@pytest.mark.slow
def test_resumed_run_ends_bit_equal_to_an_uninterrupted_one(tiny, tmp_path):
    """Masks come from (seed, batch), data order and dropout from the checkpoint: a run stopped after its step-4
    checkpoint and resumed ends with the very weights and losses of one never stopped (both depend on every mask
    it trained on)."""
    p, corpus = tiny
    whole = SpyBackend(p, corpus)
    run_protocol(whole, str(tmp_path / "whole"), seeds=1, only=["kd_stop50"], calibrate=False)
    stopped = SpyBackend(p, corpus, interrupt=Interrupt("kd_stop50", 6))
    with pytest.raises(KeyboardInterrupt):
        run_protocol(stopped, str(tmp_path / "stopped"), seeds=1, only=["kd_stop50"], calibrate=False)
    resumed = SpyBackend(p, corpus)
    run_protocol(resumed, str(tmp_path / "stopped"), seeds=1, only=["kd_stop50"], calibrate=False)
    assert resumed.trained == ["kd_stop50-seed0"] and resumed.resumed[0].endswith("checkpoint-4")
    a, b = whole.weights["kd_stop50-seed0"], resumed.weights["kd_stop50-seed0"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(folder):
        saved = json.loads((tmp_path / folder / "runs" / "kd_stop50-seed0" / "run_result.json").read_text())
        return [(e["step"], e.get("loss"), e.get("eval_loss")) for e in saved["run"]["log_history"]
                if "loss" in e or "eval_loss" in e]

    assert losses("whole") == losses("stopped") and len(losses("whole")) == 8


@pytest.mark.parametrize("task", ["mlm", "text", "vision"])  # "text": the older name of "mlm", still accepted
def test_unknown_variant_is_an_error_listing_the_valid_ones(task, capsys):
    # tiny flags: were the check ever lost, this would train a little instead of the whole demo
    argv = ["--task", task, "--steps", "2", "--seeds", "1", "--workers", "1", "--output_dir", "/tmp/never-written"]
    assert cli_main(["reproduce", "--only", "kd_ful", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--only kd_ful" in err and "kd_full" in err and "ensemble_sample" in err
    assert not Path("/tmp/never-written").exists()


def test_launch_skips_finished_stages_and_resumes_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "scale"
    runs = out / "runs"
    (runs / "baseline").mkdir(parents=True)
    (runs / "baseline" / "all_results.json").write_text("{}")  # finished
    ck = runs / "baseline_0.5x" / "checkpoint-10000"  # crashed after a complete checkpoint
    ck.mkdir(parents=True)
    monkeypatch.setattr("hf_kd.reproduce.scale.latest_complete_checkpoint",
                        lambda d: str(ck) if Path(d) == ck.parent else None)
    (runs / "baseline_0.75x").mkdir()
    (runs / "baseline_0.75x" / "events.log").write_text("")  # crashed before any checkpoint
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **k: ran.append(argv) or subprocess.CompletedProcess(argv, 0))
    bert_base_c4(str(out), launch_it=True)
    cmds = commands(str(out))
    assert len(ran) == len(cmds) - 1  # the finished baseline is skipped
    by_dir = {a[a.index("--output_dir") + 1]: a for a in ran if "--output_dir" in a}
    assert by_dir[str(runs / "baseline_0.5x")][-2:] == ["--resume_from_checkpoint", "latest"]
    assert by_dir[str(runs / "baseline_0.75x")][-1] == "--overwrite_output_dir"
    assert "--resume_from_checkpoint" not in by_dir[str(runs / "kd_full")]


def test_launch_failure_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda argv, **k: subprocess.CompletedProcess(argv, 3))
    assert cli_main(["reproduce", "--preset", "bert-base-c4", "--launch", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 1/" in err[0] and "exit status 3" in err[0] and "rerun" in err[0]


@pytest.mark.slow
def test_parallel_workers_train_the_same_runs(tiny, tmp_path):
    p, corpus = tiny
    torch.set_num_threads(1)  # the workers' setting, so both sides compute alike
    backend = TextBackend(p, corpus)
    one = run_protocol(backend, str(tmp_path / "one"), seeds=1, only=["kd_stop50"], calibrate=False)
    two = run_protocol(backend, str(tmp_path / "two"), seeds=1, only=["kd_stop50"], calibrate=False, workers=2)
    final = {r["variant"]: [e["eval_loss"] for e in r["log_history"] if "eval_loss" in e][-1] for r in one["runs"]}
    final2 = {r["variant"]: [e["eval_loss"] for e in r["log_history"] if "eval_loss" in e][-1] for r in two["runs"]}
    assert final2 == pytest.approx(final, rel=1e-4) and set(final) == {"baseline", "baseline_0.5x", "kd_stop50"}
    assert (tmp_path / "two" / "corpus" / "corpus.json").is_file()  # the workers read the saved corpus
    assert all((tmp_path / "two" / "runs" / f"{n}-seed0" / "run_result.json").is_file() for n in final)


def test_report_to_reaches_every_students_trainer(tiny, tmp_path, monkeypatch):
    """--report_to (a tracker) is passed to each student's Trainer; it is not part of a run's key (no retraining)."""
    p, corpus = tiny
    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda names: [])  # no tensorboard here
    out = tmp_path / "out"
    spy = SpyBackend(p, corpus, "tensorboard")
    run_protocol(spy, str(out), 1, ["kd_full"], full=False, calibrate=False)
    students = [r for r in spy.report_tos if r]
    assert students and all(r == ["tensorboard"] for r in students), spy.report_tos
    spy = SpyBackend(p, corpus)
    run_protocol(spy, str(out), 1, ["kd_full"], full=False, calibrate=False)  # same runs, no tracker
    assert spy.trained == [], "a tracker change retrained finished runs"
