"""run_mlm_kd.py / run_clm_kd.py refuse, in one ``error:`` line with exit 2 and nothing written, what used to crash
with a traceback or wait on the network: a teacher with fewer positions than the sequences, an output folder that
cannot be created, a mistyped teacher path while the Hub is offline, a tracker whose package is not installed."""

from __future__ import annotations

import pytest

from hf_kd.core.cli_utils import run_cli
from tests.support.scripts import KDEnv, build_env, error_lines, run_script, script_args, snapshot, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> KDEnv:
    env = build_env(tmp_path_factory.mktemp("refusals"))
    tiny_model(env.inputs / "short_teacher", env.vocab_size, max_pos=16)
    return env


@pytest.fixture(autouse=True)
def _cache(monkeypatch, env):
    monkeypatch.setenv("HF_KD_CACHE", str(env.cache))


def _refused(argv, capsys, tmp_path, env, script: str = "mlm") -> str:
    """Run the script; assert exit 2, one error line, no traceback, nothing written; return the line."""
    before = snapshot(tmp_path, env.inputs)
    rc, err = run_script(argv, capsys, script)
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert snapshot(tmp_path, env.inputs) == before  # no output folder left behind
    return lines[0]


@pytest.mark.parametrize("script", ["mlm", "clm"])
def test_teacher_with_fewer_positions_than_the_sequences_is_refused_up_front(env, tmp_path, capsys, script):
    extra = ["--teacher_model_name_or_path", str(env.inputs / "short_teacher")]
    if script == "clm":
        extra += ["--model_preset", "tiny", "--kd_task", "clm"]
    line = _refused(script_args(env, tmp_path / "out", *extra), capsys, tmp_path, env, script)
    assert "short_teacher" in line and "16" in line and "32" in line, line


@pytest.mark.parametrize("script", ["mlm", "clm"])
@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
def test_output_dir_that_cannot_be_created_is_one_line(env, tmp_path, capsys, script, where):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "run"
    else:
        out = "/proc/hf_kd_run"
    line = _refused(script_args(env, out), capsys, tmp_path, env, script)
    assert str(out) in line and "cannot be created" in line, line


def test_mistyped_teacher_path_offline_says_no_local_folder_and_hub_offline(env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ folder here: "runs/teachr" reads as an org/name Hub id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _refused(script_args(env, tmp_path / "out", "--teacher_model_name_or_path", "runs/teachr"), capsys,
                    tmp_path, env)
    assert "runs/teachr" in line and "no local folder" in line and "offline" in line, line


@pytest.mark.parametrize("script", ["mlm", "clm"])
def test_missing_tracker_package_is_named_before_model_and_data_setup(env, tmp_path, capsys, monkeypatch, script):
    import hf_kd.core.trackers as trackers
    import hf_kd.text.pretrain as pretrain

    monkeypatch.setattr(trackers, "_installed", lambda module: False)  # as on a machine without tensorboard

    def no_setup(*a, **k):
        raise AssertionError("model and data were set up before the tracker check")

    monkeypatch.setattr(pretrain, "build_trainer", no_setup)
    argv = [a if a != "none" else "tensorboard" for a in script_args(env, tmp_path / "out")]
    line = _refused(argv, capsys, tmp_path, env, script)
    assert line == ("error: --report_to tensorboard needs the tensorboard package, which is not installed; run "
                    '`pip install "hf-kd[tensorboard]"`, or pass --report_to none'), line


def test_tracker_extra_exists_in_pyproject():
    import tomllib

    from tests.support import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("tensorboard") for dep in extras["tensorboard"])


def test_reproduce_checks_the_tracker_before_any_training(tmp_path, capsys, monkeypatch):
    import hf_kd.core.trackers as trackers
    import hf_kd.reproduce.cli as cli

    monkeypatch.setattr(trackers, "_installed", lambda module: False)
    monkeypatch.setattr(cli, "_protocol", lambda a: pytest.fail("the protocol started before the tracker check"))
    capsys.readouterr()
    rc = run_cli(lambda: cli.reproduce(["--report_to", "wandb", "--output_dir", str(tmp_path / "r")]))
    err = capsys.readouterr().err
    assert rc == 2 and error_lines(err) == [
        "error: --report_to wandb needs the wandb package, which is not installed; run `pip install wandb`, or pass "
        "--report_to none"], err
    assert not (tmp_path / "r").exists()


def test_unreachable_hub_says_no_local_folder_exists(monkeypatch):
    """A name that is no local folder goes to the Hub; when that fails to connect, the line says both."""
    from transformers import AutoModelForMaskedLM

    from hf_kd.core.teachers import TeacherLoadError, load_pretrained

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files.")

    monkeypatch.setattr(AutoModelForMaskedLM, "from_pretrained", offline)
    with pytest.raises(TeacherLoadError, match=r"'org/teachr'.*no local folder of that name exists and the Hub was "
                                               r"not reachable"):
        load_pretrained("org/teachr", AutoModelForMaskedLM)


def test_a_masked_lm_run_is_refused_as_teacher_of_a_causal_lm(env, tmp_path, capsys):
    """A BERT MLM folder would load as BertLMHeadModel with is_decoder=False: a teacher that sees the token it is
    asked to predict. Refused from its config, before any weights load."""
    bert = tiny_model(tmp_path / "bert_mlm_run", env.vocab_size)
    line = _refused(script_args(env, tmp_path / "out", "--model_preset", "tiny", "--teacher_model_name_or_path",
                                str(bert)), capsys, tmp_path, env, script="clm")
    assert "bert_mlm_run" in line and "is a masked LM checkpoint, BertForMaskedLM" in line, line


def test_a_causal_lm_run_is_refused_as_teacher_of_a_masked_lm(env, tmp_path, capsys):
    from tests.support.models import tiny_gpt2

    gpt2 = tmp_path / "gpt2_run"
    tiny_gpt2(vocab_size=env.vocab_size).save_pretrained(gpt2)
    line = _refused(script_args(env, tmp_path / "out", "--teacher_model_name_or_path", str(gpt2)), capsys,
                    tmp_path, env)
    assert "gpt2_run" in line and "is a causal LM checkpoint, GPT2LMHeadModel" in line, line
