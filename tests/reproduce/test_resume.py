"""hf-kd reproduce orchestration: finished runs are reused, interrupted ones resume, names are checked, --launch resumes."""

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import transformers

from hf_kd.cli import main as cli_main
from hf_kd.reproduce import text
from hf_kd.reproduce.scale import bert_base_c4, commands
from tests.support.data import write_tiny_corpus


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    p = replace(text.TinyPreset(), vocab_size=200, max_seq_length=32, batch_size=4, steps=8, eval_every=2,
                good_teacher_steps=6, second_teacher_steps=4, poor_teacher_steps=2, frontier=(0.5,))
    return p, str(corpus)


def _count_trainings(monkeypatch):
    calls = []
    real = text.train_one

    def counting(p, corpus, out, steps, seed, *a, **k):
        calls.append(Path(out).name)
        return real(p, corpus, out, steps, seed, *a, **k)

    monkeypatch.setattr(text, "train_one", counting)
    return calls


class _Interrupt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6 and "kd_full" in args.output_dir:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_and_rerun_trains_only_what_was_left(tiny, tmp_path, monkeypatch):
    p, corpus = tiny
    out = str(tmp_path / "out")
    real_trainer_for = text.trainer_for

    def interrupting(*a, **k):
        trainer = real_trainer_for(*a, **k)
        trainer.add_callback(_Interrupt())
        return trainer

    monkeypatch.setattr(text, "trainer_for", interrupting)
    calls = _count_trainings(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during kd_full, after its checkpoint at step 4
        text.run_tiny(out, corpus, seeds=1, preset=p, only=["kd_full"], calibrate=False)
    assert calls[0].startswith("good-") and calls[1:] == ["baseline-seed0", "baseline_0.5x-seed0", "kd_full-seed0"]
    run_dir = Path(out) / "runs" / "kd_full-seed0"
    assert (run_dir / "checkpoint-4").is_dir() and not (run_dir / "run_result.json").exists()

    monkeypatch.setattr(text, "trainer_for", real_trainer_for)
    resumed = []
    real_train = transformers.Trainer.train
    monkeypatch.setattr(transformers.Trainer, "train",
                        lambda self, resume_from_checkpoint=None, **k: resumed.append(resume_from_checkpoint)
                        or real_train(self, resume_from_checkpoint=resume_from_checkpoint, **k))
    calls.clear()
    res = text.run_tiny(out, corpus, seeds=1, preset=p, only=["kd_full"], calibrate=False)
    assert calls == ["kd_full-seed0"]  # the teacher and the baselines were not trained again
    assert len(resumed) == 1 and resumed[0].endswith("checkpoint-4")
    kd = next(r for r in res["runs"] if r["variant"] == "kd_full")
    assert kd["teacher_forwards"] == 8  # 4 before the interruption + 4 after the resume
    assert [e["step"] for e in kd["log_history"] if "eval_loss" in e] == [2, 4, 6, 8]

    calls.clear()
    text.run_tiny(out, corpus, seeds=1, preset=p, only=["kd_full"], calibrate=False)
    assert calls == []  # everything finished: nothing is retrained

    # A checkpoint left by a run with other settings is not resumed from (it would mix two schedules).
    resumed.clear()
    (run_dir / "run_result.json").unlink()
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "run_key.json").write_text("{}")
    monkeypatch.setattr(text, "latest_complete_checkpoint",  # as if that checkpoint were complete
                        lambda d: str(Path(d) / "checkpoint-4") if (Path(d) / "checkpoint-4").is_dir() else None)
    text.run_tiny(out, corpus, seeds=1, preset=p, only=["kd_full"], calibrate=False)
    assert calls == ["kd_full-seed0"] and resumed == [None]
    calls.clear()
    text.run_tiny(out, corpus, seeds=1, preset=replace(p, steps=10), only=["kd_full"], calibrate=False)
    assert "baseline-seed0" in calls  # other settings: a finished run is not reused for them


def test_unknown_variant_is_an_error_listing_the_valid_ones(capsys):
    # tiny flags: were the check ever lost, this would train a little instead of the whole demo
    argv = ["--steps", "2", "--seeds", "1", "--workers", "1", "--output_dir", "/tmp/never-written"]
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
    import torch

    p, corpus = tiny
    torch.set_num_threads(1)  # the workers' setting, so both sides compute alike
    one = text.run_tiny(str(tmp_path / "one"), corpus, seeds=1, preset=p, only=["kd_stop50"], calibrate=False)
    two = text.run_tiny(str(tmp_path / "two"), corpus, seeds=1, preset=p, only=["kd_stop50"], calibrate=False,
                        workers=2)
    final = {r["variant"]: [e["eval_loss"] for e in r["log_history"] if "eval_loss" in e][-1] for r in one["runs"]}
    final2 = {r["variant"]: [e["eval_loss"] for e in r["log_history"] if "eval_loss" in e][-1] for r in two["runs"]}
    assert final2 == pytest.approx(final, rel=1e-4) and set(final) == {"baseline", "baseline_0.5x", "kd_stop50"}
    assert (tmp_path / "two" / "corpus" / "corpus.json").is_file()  # the workers read the saved corpus
    assert all((tmp_path / "two" / "runs" / f"{n}-seed0" / "run_result.json").is_file() for n in final)


def test_report_to_reaches_every_students_trainer(tiny, tmp_path, monkeypatch):
    """--report_to (a tracker) is passed to each student's Trainer; it is not part of a run's key (no retraining)."""
    p, corpus = tiny
    seen = []
    real = text.trainer_for

    def recording(p_, corpus_, model, teachers, args):
        seen.append(args.report_to)
        return real(p_, corpus_, model, teachers, args)

    monkeypatch.setattr(text, "trainer_for", recording)
    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda names: [])  # no tensorboard here
    out = tmp_path / "out"
    text.run_tiny(str(out), corpus, 1, p, ["kd_full"], full=False, calibrate=False, report_to="tensorboard")
    students = [r for r in seen if r]
    assert students and all(r == ["tensorboard"] for r in students), seen
    seen.clear()
    text.run_tiny(str(out), corpus, 1, p, ["kd_full"], full=False, calibrate=False)  # same runs, no tracker
    assert seen == [], "a tracker change retrained finished runs"
