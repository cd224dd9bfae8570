"""Safe loading: safetensors first, pickle only on request and then weights-only, no remote code, no leaked tokens."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from hf_kd import DistillationTrainingArguments
from hf_kd.core.teachers import ModelLoadError, TeacherLoadError, load_pretrained, load_state_dict_file
from tests.support.scripts import build_env, error_lines, run_script, script_args, snapshot, tiny_model

T = "--teacher_model_name_or_path"
SECRET = "hf_NotARealTokenButSecret123"


class _Payload:
    """Unpickling this creates ``marker``: stands in for any code a malicious pickle would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_only_model(folder: Path, vocab_size: int, marker: Path | None = None) -> Path:
    """A model folder whose weights are only ``pytorch_model.bin`` (with a code-running payload if ``marker``)."""
    tiny_model(folder, vocab_size)
    state = load_file(str(folder / "model.safetensors"))
    if marker is not None:
        state["payload"] = _Payload(marker)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def remote_code_model(folder: Path, vocab_size: int, marker: Path) -> Path:
    """A model folder whose config asks for its own modeling code; importing that code creates ``marker``."""
    tiny_model(folder, vocab_size)
    cfg = json.loads((folder / "config.json").read_text())
    # A model_type transformers does not know, so only the folder's own code could build it.
    cfg.update(model_type="hfkd_custom", architectures=["CustomForMaskedLM"],
               auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForMaskedLM": "custom.CustomForMaskedLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig, BertForMaskedLM\n\n\n"
        "class CustomConfig(BertConfig):\n    model_type = 'hfkd_custom'\n\n\n"
        "class CustomForMaskedLM(BertForMaskedLM):\n    config_class = CustomConfig\n")
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build_env(tmp_path_factory.mktemp("safe_env"))


@pytest.fixture(autouse=True)
def _cache(monkeypatch, env):
    monkeypatch.setenv("HF_KD_CACHE", str(env.cache))


# -- pickle ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [T, "--model_name_or_path"])
def test_pickle_only_weights_are_refused_without_opt_in(env, tmp_path, capsys, flag):
    marker = tmp_path / "PWNED"
    model = pickle_only_model(tmp_path / "model", env.vocab_size, marker)
    before = snapshot(tmp_path)
    rc, err = run_script(script_args(env, tmp_path / "out", flag, str(model), "--tokenizer_name", str(env.tokenizer)),
                         capsys)
    assert rc == 2
    (line,) = error_lines(err)
    assert "pytorch_model.bin" in line and "--allow_pickle_weights" in line
    assert not marker.exists() and snapshot(tmp_path) == before


def test_opt_in_pickle_goes_through_weights_only(env, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    model = pickle_only_model(tmp_path / "model", env.vocab_size, marker)
    rc, err = run_script(script_args(env, tmp_path / "out", T, str(model), "--allow_pickle_weights"), capsys)
    assert rc == 2
    (line,) = error_lines(err)
    assert "weights_only=True" in line and str(model) in line
    assert not marker.exists()  # the payload never ran


def test_opt_in_plain_pickle_loads(env, tmp_path):
    model = pickle_only_model(tmp_path / "model", env.vocab_size)
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_pretrained(str(model), AutoModelForMaskedLM)
    teacher = load_pretrained(str(model), AutoModelForMaskedLM, allow_pickle=True)
    assert teacher.config.vocab_size == env.vocab_size


def test_safetensors_preferred_over_a_pickle_next_to_it(env, tmp_path):
    marker = tmp_path / "PWNED"
    model = tiny_model(tmp_path / "model", env.vocab_size)
    state = load_file(str(model / "model.safetensors"))
    torch.save({**state, "payload": _Payload(marker)}, model / "pytorch_model.bin")
    for allow in (False, True):
        load_pretrained(str(model), AutoModelForMaskedLM, allow_pickle=allow)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_single_pickle_file(tmp_path, suffix):
    marker = tmp_path / "PWNED"
    good, bad = tmp_path / f"good{suffix}", tmp_path / f"bad{suffix}"
    torch.save({"w": torch.ones(2)}, good)
    torch.save({"w": torch.ones(2), "payload": _Payload(marker)}, bad)
    with pytest.raises(ModelLoadError, match="refusing to unpickle .*--allow_pickle_weights"):
        load_state_dict_file(good)
    assert torch.equal(load_state_dict_file(good, allow_pickle=True)["w"], torch.ones(2))
    with pytest.raises(ModelLoadError, match=r"weights_only=True"):
        load_state_dict_file(bad, allow_pickle=True)
    assert not marker.exists()


# -- remote code -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [T, "--model_name_or_path"])
def test_remote_code_is_not_run_by_default(env, tmp_path, capsys, flag):
    marker = tmp_path / "RAN"
    model = remote_code_model(tmp_path / "model", env.vocab_size, marker)
    rc, err = run_script(script_args(env, tmp_path / "out", flag, str(model), "--tokenizer_name", str(env.tokenizer)),
                         capsys)
    assert rc == 2
    (line,) = error_lines(err)
    assert str(model) in line and ("--teacher_trust_remote_code" if flag == T else "--trust_remote_code") in line
    assert not marker.exists()


def test_teacher_trust_remote_code_is_an_explicit_flag(env, tmp_path, monkeypatch):
    assert DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True).teacher_trust_remote_code is False
    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(AutoModelForMaskedLM, "from_pretrained", fake_from_pretrained)
    from hf_kd.text.teacher_loading import load_teachers

    model = tiny_model(tmp_path / "model", env.vocab_size)
    for flag in (False, True):
        args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                             teacher_trust_remote_code=flag)
        with pytest.raises(TeacherLoadError, match="stop here"):
            load_teachers(str(model), args)
        assert seen["trust_remote_code"] is flag and seen["use_safetensors"] is True


# -- credentials -----------------------------------------------------------------------------------------------
def test_hub_token_never_written(env, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    teacher = tiny_model(tmp_path / "teacher", env.vocab_size)
    with caplog.at_level(logging.DEBUG):
        rc, err = run_script(script_args(env, out, T, str(teacher), "--hub_token", SECRET, "--save_strategy", "steps",
                                         "--save_steps", "1", "--logging_steps", "1"), capsys)
    assert rc == 0, err[-2000:]
    captured = capsys.readouterr()
    assert SECRET not in err + captured.out + captured.err + caplog.text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"training_args.bin", "trainer_state.json", "all_results.json"} <= {p.name for p in files}
    assert any(p.parent.name == "checkpoint-1" for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    args = torch.load(out / "training_args.bin", weights_only=False)  # our own file, written by this test
    assert args.hub_token is None and args.kd_alpha == 0.9


def test_token_masked_in_serialised_args_but_kept_in_memory(tmp_path):
    import copy

    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", hub_token=SECRET)
    assert SECRET not in args.to_json_string() and SECRET not in str(args)
    assert copy.deepcopy(args).hub_token == SECRET and args.hub_token == SECRET  # pushes still authenticate
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_student_that_cannot_load_is_not_called_a_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # a mistyped folder next to real ones: refused before any Hub call
    with pytest.raises(ModelLoadError, match="student 'runs/nope' does not exist") as caught:
        load_pretrained("runs/nope", AutoModelForMaskedLM, what="student")
    assert not isinstance(caught.value, TeacherLoadError)
    with pytest.raises(TeacherLoadError, match="teacher 'runs/nope' does not exist"):
        load_pretrained("runs/nope", AutoModelForMaskedLM)
