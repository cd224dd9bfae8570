"""The ``hf-kd`` entry point and the shared CLI plumbing: help/version without torch, prog names, config files
(YAML/JSON + command-line overrides), allowed values in --help, log levels, one-line user errors vs bug tracebacks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import tomllib

from hf_kd.core.cli_utils import UserError, parse_args, run_cli
from hf_kd.core.errors import DataError
from tests.support import REPO  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120,
                          cwd=REPO)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_exit_0_without_importing_torch(flag):
    proc = _python(f"import sys\nfrom hf_kd.cli import main\nrc = main([{flag!r}])\n"
                   "print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)\nsys.exit(rc)")
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED False False" in proc.stdout
    if flag == "--help":
        assert "usage: hf-kd" in proc.stdout and "reproduce" in proc.stdout and "HF_KD_DEBUG" in proc.stdout
    else:
        version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
        assert proc.stdout.startswith(f"hf-kd {version}")


def test_package_exports_are_lazy_and_complete():
    import hf_kd

    assert sorted(hf_kd.__all__) == sorted(hf_kd._EXPORTS)
    for name in hf_kd.__all__:
        assert getattr(hf_kd, name) is not None


def test_console_module_help_exit_status():
    proc = subprocess.run([sys.executable, "-m", "hf_kd.cli", "--help"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "reproduce" in proc.stdout


@pytest.mark.parametrize("argv", [[], ["bogus"]])
def test_missing_or_unknown_command_exits_2(argv, capsys):
    from hf_kd.cli import main

    assert main(argv) == 2
    assert "usage: hf-kd" in capsys.readouterr().err


def test_subcommand_help_names_its_prog(capsys):
    from hf_kd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-kd reproduce"), out[:200]


# -- config files --------------------------------------------------------------------------------------------
@dataclass
class _Args:
    name: str = field(metadata={"help": "required"})
    lr: float = field(default=1.0, metadata={"help": "a number"})
    mode: str = field(default="a", metadata={"help": "a mode", "choices": ("a", "b")})
    items: list[str] | None = field(default=None, metadata={"help": "a list"})
    flag: bool = field(default=False, metadata={"help": "a bool"})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_with_command_line_overrides(tmp_path, suffix):
    values = {"name": "from-file", "lr": 0.5, "items": ["x", "y"], "flag": True}
    f = tmp_path / f"args{suffix}"
    if suffix == ".json":
        f.write_text(json.dumps(values))
    else:
        f.write_text("name: from-file\nlr: 0.5\nitems: [x, y]\nflag: true\n")
    (a,) = parse_args((_Args,), ["--config", str(f), "--lr", "1e-3"])
    assert (a.name, a.lr, a.items, a.flag, a.mode) == ("from-file", 1e-3, ["x", "y"], True, "a")
    (b,) = parse_args((_Args,), [str(f), "--name", "cli"])  # a lone leading file works too
    assert (b.name, b.lr) == ("cli", 0.5)
    (c,) = parse_args((_Args,), [f"--config={f}"])
    assert c.lr == 0.5


@pytest.mark.parametrize("content,expected", [
    ("name: x\nlrr: 2\n", "unknown argument 'lrr'"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_config_file_is_one_line_user_error(tmp_path, content, expected):
    f = tmp_path / "args.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=expected.replace("[", r"\[")):
        parse_args((_Args,), ["--config", str(f)])
    with pytest.raises(UserError, match="does not exist"):
        parse_args((_Args,), ["--config", str(tmp_path / "nope.yaml")])


def test_help_lists_allowed_values_of_every_choice_field(capsys):
    from hf_kd.text.config import KD_POSITIONS, NONFINITE_POLICIES, TEACHER_DTYPES, DistillationTrainingArguments
    from hf_kd.text.script_args import ALL_PRESETS, DataArguments, ModelArguments

    with pytest.raises(SystemExit):
        parse_args((ModelArguments, DataArguments, DistillationTrainingArguments), ["--help"])
    out = capsys.readouterr().out
    for name, allowed in [("kd_positions", KD_POSITIONS), ("teacher_dtype", TEACHER_DTYPES),
                          ("on_nonfinite_loss", NONFINITE_POLICIES), ("kd_teacher_selection", ("mean", "sample")),
                          ("kd_divergence", ("forward_kl", "reverse_kl")), ("model_preset", ALL_PRESETS)]:
        assert f"--{name} {{{','.join(allowed)}}}" in out, name
    assert "--config FILE" in out


def test_invalid_choice_is_named_with_allowed_values():
    with pytest.raises(UserError) as e:
        parse_args((_Args,), ["--name", "n", "--mode", "c"])
    assert "mode='c' is invalid: expected one of ('a', 'b')" in str(e.value)


# -- logging -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("should_log,expected", [(True, logging.ERROR), (False, logging.CRITICAL)])
def test_log_level_follows_training_arguments(tmp_path, monkeypatch, should_log, expected):
    import datasets
    import transformers
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "should_log", property(lambda self: should_log))
    before = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    try:
        parse_args((TrainingArguments,), ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "true",
                                          "--log_level", "error", "--log_level_replica", "critical"])
        assert logging.getLogger("hf_kd").getEffectiveLevel() == expected
        assert transformers.utils.logging.get_verbosity() == expected
        assert datasets.utils.logging.get_verbosity() == expected
    finally:
        transformers.utils.logging.set_verbosity(before[0])
        datasets.utils.logging.set_verbosity(before[1])
        logging.getLogger("hf_kd").setLevel(logging.INFO)


# -- user errors vs bugs -------------------------------------------------------------------------------------
def _raise_in_project(exc: Exception):
    """Raise ``exc`` from a frame in hf_kd (as library code reporting bad input does)."""
    from hf_kd.core import kd_args

    class A:
        kd_alpha, kd_temperature, kd_stop_ratio, kd_stop_steps = 2.0, 1.0, None, None

    kd_args.validate_kd_fields(A())  # raises ValueError('kd_alpha=2.0 is invalid ...') inside hf_kd


@pytest.mark.parametrize("make", [
    lambda: (_ for _ in ()).throw(UserError("bad flag --x")),
    lambda: (_ for _ in ()).throw(DataError("file is empty")),
    lambda: _raise_in_project(None),
])
def test_user_errors_are_one_line_exit_2(capsys, make):
    assert run_cli(make) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("make", [
    lambda: json.loads("{oops"),          # ValueError raised by the stdlib, not by our checks: a bug
    lambda: {}["missing"],                # KeyError
    lambda: open("/nonexistent/hf_kd/x"),  # FileNotFoundError raised outside the project's code
])
def test_bugs_keep_their_traceback(make):
    with pytest.raises((ValueError, KeyError, FileNotFoundError)):
        run_cli(make)


def test_hf_kd_debug_shows_user_error_traceback(monkeypatch):
    monkeypatch.setenv("HF_KD_DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(lambda: (_ for _ in ()).throw(UserError("bad flag --x")))


# -- a mistyped local teacher path fails at once, without the Hub --------------------------------------------
@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub download or API call fails the test."""
    import huggingface_hub
    import transformers.utils.hub as th

    def refuse(*a, **k):
        raise AssertionError("the Hub was called")

    for mod, name in [(huggingface_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download"),
                      (huggingface_hub.file_download, "hf_hub_download"), (th, "hf_hub_download"),
                      (huggingface_hub.HfApi, "model_info")]:
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, refuse)


@pytest.mark.parametrize("name,local", [
    ("runs/nope", True), ("./teacher", True), ("../x", True), ("/abs/x", True), ("~/x", True), ("a/b/c", True),
    ("bert-base-uncased", False), ("google/bert_uncased_L-2_H-128_A-2", False)])
def test_path_like_teacher_names(tmp_path, monkeypatch, name, local):
    from hf_kd.core.teachers import looks_like_local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_local_path(name) is local


def test_mistyped_local_teacher_is_one_line_error_before_data_or_hub(tmp_path, monkeypatch, capsys, no_hub):
    import hf_kd.text.pretrain as pretrain
    import run_scripts.run_mlm_kd as script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # The check lives in run_pretraining (shared by run_mlm_kd and run_clm_kd), before any data or model work.
    monkeypatch.setattr(pretrain, "build_trainer", lambda *a: pytest.fail("went on to data and training"))
    rc = run_cli(lambda: script.main(["--output_dir", "runs/kd", "--teacher_model_name_or_path", "runs/nope",
                                      "--report_to", "none", "--use_cpu", "true"]))
    err = capsys.readouterr().err
    assert rc == 2 and "error: teacher 'runs/nope' does not exist" in err and "Traceback" not in err


def test_library_load_of_mistyped_local_teacher_never_calls_the_hub(tmp_path, monkeypatch, no_hub):
    from transformers import AutoModelForMaskedLM

    from hf_kd.core.teachers import TeacherLoadError, load_pretrained

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(TeacherLoadError, match="'runs/nope' does not exist"):
        load_pretrained("runs/nope", AutoModelForMaskedLM)
