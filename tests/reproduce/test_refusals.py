"""hf-kd reproduce refusals: one line, exit 2, before any data or model work, and no --output_dir left behind."""

from pathlib import Path

import pytest

from hf_kd.cli import main as cli_main
from hf_kd.core.errors import UserError

QUICK = ["--steps", "2", "--seeds", "1", "--workers", "1"]


@pytest.fixture
def no_data_work(tmp_path, monkeypatch):
    """HF_KD_CACHE under tmp_path, and any corpus or digits load fails the test: a refusal must come first."""
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))

    def forbidden(*args, **kwargs):
        raise AssertionError("data or model work before the refusal")

    monkeypatch.setattr("hf_kd.reproduce.text.load_corpus", forbidden)
    monkeypatch.setattr("hf_kd.reproduce.vision.VisionBackend.__init__", forbidden)
    return tmp_path / "cache"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_output_dir_that_cannot_be_created_is_one_line_and_writes_nothing(where, tmp_path, no_data_work, capsys):
    if where == "proc":
        if not Path("/proc").is_dir():
            pytest.skip("no /proc here")
        out = "/proc/hf-kd-reproduce-out"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("keep me")
        out = str(blocker / "out")
    assert cli_main(["reproduce", *QUICK, "--output_dir", out]) == 2
    line = one_error_line(capsys)
    assert out in line and "expected" in line
    assert not Path(out).exists() and not no_data_work.exists()
    if where == "under_a_file":
        assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("task,pair", [
    ("mlm", "batch_size=0"), ("mlm", "steps=0"), ("mlm", "eval_every=0"), ("mlm", "max_seq_length=0"),
    ("mlm", "vocab_size=0"), ("mlm", "good_teacher_steps=-3"), ("mlm", "max_eval_samples=0"),
    ("mlm", "learning_rate=0"), ("mlm", "kd_alpha=1.5"), ("mlm", "frontier=0.5,0"),
    ("clm", "batch_size=0"), ("clm", "poor_teacher_steps=0"), ("vision", "batch_size=0"), ("vision", "eval_every=0"),
])
def test_out_of_range_override_is_refused_naming_key_value_and_range(task, pair, tmp_path, no_data_work, capsys):
    out = tmp_path / "out"
    assert cli_main(["reproduce", "--task", task, *QUICK, "--override", pair, "--output_dir", str(out)]) == 2
    line = one_error_line(capsys)
    key = pair.split("=")[0]
    assert pair in line and f"expected {key} to be" in line
    assert not out.exists() and not no_data_work.exists()


def test_mistyped_recycled_teacher_is_refused_before_any_work(tmp_path, no_data_work, capsys):
    out, teacher = tmp_path / "out", str(tmp_path / "runs" / "teachr")
    argv = ["reproduce", *QUICK, "--override", f"recycled_teacher={teacher}", "--output_dir", str(out)]
    assert cli_main(argv) == 2
    assert teacher in one_error_line(capsys)
    assert not out.exists()


def test_refusal_found_while_building_the_models_leaves_no_output_dir(tiny_corpus, tmp_path, capsys):
    """An unknown model preset is only found when the first model is built (the calibration's probe)."""
    out = tmp_path / "out"
    argv = ["reproduce", "--corpus", tiny_corpus, *QUICK, "--override", "vocab_size=200", "max_seq_length=32",
            "model_preset=bogus", "--output_dir", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the corpus's progress bars, then the refusal
    assert err[-1].startswith("error: ") and "bogus" in err[-1] and not any(line.startswith("Traceback") for line in err)
    assert not out.exists()


@pytest.mark.parametrize("before,writes,kept", [
    ("absent", False, False),  # made by this command and still empty: removed
    ("absent", True, True),  # made by this command, but holds work a rerun resumes from: kept
    ("empty", False, True),  # the user's own (empty) folder: never removed
])
def test_a_refusal_removes_only_an_empty_folder_it_created(before, writes, kept, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if before == "empty":
        out.mkdir()

    def refuse_late(a):  # a refusal from deep inside the protocol, after its folders were made
        (out / "runs" / "baseline-seed0").mkdir(parents=True, exist_ok=True)
        if writes:
            (out / "calibration.json").write_text("{}")
        raise UserError("late refusal")

    monkeypatch.setattr("hf_kd.reproduce.cli._run", refuse_late)
    assert cli_main(["reproduce", *QUICK, "--output_dir", str(out)]) == 2
    assert one_error_line(capsys) == "error: late refusal"
    assert out.exists() == kept
