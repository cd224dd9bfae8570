"""What a vision run leaves and shows: atomic, verified, rotated checkpoints; config.json + model card + Hub push
(tested up to the network boundary); progress bar and periodic log lines.

    python -m pytest tests/test_vision_publish.py -q
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from hf_kd.core.checkpointing import checkpoint_problem, resolve_resume
from hf_kd.core.cli_utils import UserError, run_cli
from hf_kd.core.teachers import TeacherLoadError
from hf_kd.vision.checkpoints import STATE_MARKER, save_checkpoint
from hf_kd.vision.progress import LOG_KEYS, Progress
from hf_kd.vision.setup import load_teacher
from run_scripts import run_resnet_kd

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TINY = ["--model", "resnet18", "--image_size", "16", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "128", "--learning_rate", "0.05", "--seed", "0"]
SECRET = "hf_THISisNOTaREALtokenButMustNeverBeWritten"


def _run(out: Path, *flags: str) -> dict:
    try:
        return run_resnet_kd.main(["--output_dir", str(out), *TINY, *flags])
    finally:  # the next in-process run starts from a fresh accelerate state
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> Path:
    """5 steps, a checkpoint every step, at most 2 kept."""
    out = tmp_path_factory.mktemp("vision_publish") / "rotated"
    _run(out, "--max_steps", "5", "--checkpointing_steps", "1", "--save_total_limit", "2", "--disable_tqdm")
    return out


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_rotation_keeps_the_newest_n_complete_checkpoints(rotated):
    assert sorted(p.name for p in rotated.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert not list(rotated.glob(".partial-*"))  # staging folders are renamed, none left behind
    for ckpt in rotated.glob("checkpoint-*"):
        assert checkpoint_problem(ckpt, STATE_MARKER) is None
        marker = json.loads((ckpt / STATE_MARKER).read_text())
        assert marker["step"] == int(ckpt.name.split("-")[1]) and marker["gpu_hours"] > 0
        assert {"model.safetensors", "optimizer.bin", "scheduler.bin"} <= marker["files"].keys()


def _half_written(src: Path, dst: Path, damage: str) -> None:
    shutil.copytree(src, dst)
    if damage == "truncated weights":
        with open(dst / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    elif damage == "truncated optimizer":  # not a safetensors file: caught by the marker's size list
        with open(dst / "optimizer.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "no marker":  # killed before the marker was written (a save done in place)
        (dst / STATE_MARKER).unlink()
        (dst / "custom_checkpoint_0.pkl").unlink()


@pytest.mark.parametrize("damage", ["truncated weights", "truncated optimizer", "no marker"])
def test_a_half_written_checkpoint_is_never_resumed(rotated, tmp_path, damage, caplog):
    out = tmp_path / "run"
    shutil.copytree(rotated, out)
    _half_written(out / "checkpoint-5", out / "checkpoint-9", damage)
    (out / ".partial-checkpoint-12" / "checkpoint-12").mkdir(parents=True)  # a save killed mid-way
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(out, "latest", STATE_MARKER) == out / "checkpoint-5"
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-9" in caplog.text
    with pytest.raises(UserError, match="checkpoint-9.* is not a complete checkpoint"):
        resolve_resume(out, str(out / "checkpoint-9"), STATE_MARKER)


def test_a_run_resumes_from_the_newest_complete_checkpoint(rotated, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(rotated, out)
    _half_written(out / "checkpoint-5", out / "checkpoint-6", "truncated weights")
    with caplog.at_level(logging.INFO):
        _run(out, "--max_steps", "6", "--checkpointing_steps", "1", "--save_total_limit", "2",
             "--resume_from_checkpoint", "latest", "--disable_tqdm")
    assert f"resuming from {out / 'checkpoint-5'}" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6
    # the broken checkpoint-6 was replaced by the complete one the resumed run saved
    assert checkpoint_problem(out / "checkpoint-6", STATE_MARKER) is None


def test_no_complete_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint-<step> folder"):
        resolve_resume(tmp_path, "latest", STATE_MARKER)


def test_a_save_killed_mid_way_publishes_nothing(tmp_path):
    """The crash happens inside ``save_state``: no checkpoint-N appears, and the next save cleans up."""
    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 2))
    save_checkpoint(acc, tmp_path, 1, {})
    original = acc.save_state

    def killed(path):
        original(path)
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # e.g. Ctrl-C or a preemption signal

    acc.save_state = killed
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(acc, tmp_path, 2, {})
    assert not (tmp_path / "checkpoint-2").exists() and (tmp_path / ".partial-checkpoint-2").exists()
    assert resolve_resume(tmp_path, "latest", STATE_MARKER) == tmp_path / "checkpoint-1"
    acc.save_state = original
    save_checkpoint(acc, tmp_path, 3, {})
    assert not list(tmp_path.glob(".partial-*")) and model is not None


# -- config.json, model card, Hub ------------------------------------------------------------------------------
def test_a_run_folder_loads_as_a_teacher_by_its_config_json(rotated, tmp_path):
    cfg = json.loads((rotated / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_classes"] == 10 and cfg["label_names"][3] == "3"
    assert cfg["pretrained_cfg"]["input_size"] == [3, 16, 16] and len(cfg["pretrained_cfg"]["mean"]) == 3
    assert isinstance(load_teacher(str(rotated), None, 10), torch.nn.Module)
    bare = tmp_path / "bare"  # weights without config.json: the architecture is unknown
    bare.mkdir()
    shutil.copy(rotated / "model.safetensors", bare)
    with pytest.raises(TeacherLoadError, match="has no model.safetensors \\+ config.json"):
        load_teacher(str(bare), None, 10)


def _card_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split("---")[1])


@pytest.fixture
def uploads(monkeypatch) -> list[dict]:
    """Replace the Hub calls at the network boundary; each upload records what it was given."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import filter_repo_objects

    calls: list[dict] = []

    def upload_folder(self, *, folder_path, repo_id, ignore_patterns=None, **kw):
        root = Path(folder_path)
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        sent = sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        calls.append({"repo_id": repo_id, "token": self.token, "files": sent, **kw})
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # an offline environment would refuse --push_to_hub
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append({"created": repo_id, **kw}))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_kd_run_pushes_model_config_card_and_metrics_and_writes_no_token(rotated, tmp_path, uploads, caplog):
    out = tmp_path / "kd"
    with caplog.at_level(logging.DEBUG):
        _run(out, "--max_steps", "4", "--checkpointing_steps", "2", "--teacher_checkpoint", str(rotated),
             "--kd_alpha", "0.3", "--kd_temperature", "2", "--kd_stop_steps", "3", "--push_to_hub",
             "--hub_model_id", "someone/digits-kd", "--hub_token", SECRET, "--hub_private_repo", "true",
             "--disable_tqdm")
    created, upload = uploads
    assert created == {"created": "someone/digits-kd", "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == "someone/digits-kd" and upload["token"] == SECRET  # the token reaches the call
    assert upload["files"] == ["README.md", "config.json", "metrics.jsonl", "model.safetensors"]  # no checkpoints
    facts = _card_yaml(out / "README.md")["hf_kd"]
    assert facts["teachers"] == [str(rotated)] and facts["kd_alpha"] == 0.3 and facts["kd_temperature"] == 2.0
    assert facts["kd_stop_step"] == 3 and facts["kd_teacher_selection"] == "mean"
    assert facts["train_steps"] == 4 and facts["training_data"] == "sklearn digits" and facts["gpu_hours"] > 0
    assert 0 <= facts["top1"] <= 1
    card = (out / "README.md").read_text()
    assert 'hf_hub_download("someone/digits-kd", "config.json")' in card and "for the first 3 of 4" in card
    for f in out.rglob("*"):  # never on disk: card, config, metrics, checkpoints (pickles included)
        assert not f.is_file() or SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in caplog.text


def test_baseline_card_says_no_kd_and_failed_upload_is_one_line(rotated, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi, constants

    def offline(self, *a, **kw):
        raise OSError(f"cannot reach the Hub with {SECRET}")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the upload itself fails, not the up-front check
    monkeypatch.setattr(HfApi, "create_repo", offline)
    out = tmp_path / "base"
    argv = ["--output_dir", str(out), *TINY, "--max_steps", "1", "--push_to_hub", "--hub_token", SECRET,
            "--disable_tqdm"]
    assert run_cli(lambda: run_resnet_kd.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not push" in err[0] and SECRET not in err[0]
    facts = _card_yaml(out / "README.md")["hf_kd"]  # the folder is complete before the upload
    assert facts["teachers"] == [] and facts["kd_alpha"] == 0.0 and facts["kd_temperature"] is None
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_push_to_hub_in_offline_mode_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "offline"
    assert run_cli(lambda: run_resnet_kd.main(["--output_dir", str(out), *TINY, "--max_steps", "1",
                                               "--push_to_hub"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --push_to_hub") and "HF_HUB_OFFLINE" in err[0], err
    assert not out.exists()  # refused before anything was written


# -- progress ----------------------------------------------------------------------------------------------------
def test_log_lines_appear_every_logging_steps_with_their_keys(rotated, tmp_path, caplog, capsys):
    out = tmp_path / "logged"
    with caplog.at_level(logging.INFO, logger="hf_kd.vision.progress"):
        _run(out, "--max_steps", "4", "--logging_steps", "2", "--eval_steps", "2", "--teacher_checkpoint",
             str(rotated), "--kd_stop_steps", "2")
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_kd.vision.progress"]
    assert [re.search(r"step \d+/\d+", line).group() for line in lines] == ["step 2/4", "step 4/4"]
    for key in LOG_KEYS:
        assert f" {key} " in lines[0], key
    assert "kd_loss" not in lines[1]  # no KD in steps 3 and 4
    assert "training" in capsys.readouterr().err  # the progress bar (main process)
    # a log line and an evaluation at the same step: the evaluation row still measures the window
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_images_per_second"] > 0 and rows[0]["teacher_time_fraction"] > 0


def test_window_straddling_the_stop_step_reports_the_text_definitions(rotated, tmp_path, caplog):
    """kd_weight is the window's mean KD weight and kd_loss the mean over its KD steps (as for text), in the
    evaluation rows and the log lines alike; before, an evaluation row took the weight of its last step only."""
    out = tmp_path / "straddle"
    with caplog.at_level(logging.INFO, logger="hf_kd.vision.progress"):
        _run(out, "--max_steps", "4", "--logging_steps", "2", "--eval_steps", "2", "--teacher_checkpoint",
             str(rotated), "--kd_stop_steps", "1", "--kd_alpha", "0.3", "--disable_tqdm")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kd_weight"] for r in rows] == [pytest.approx(0.15), 0.0]  # 1 KD step of 2, then none
    assert rows[0]["kd_loss"] > 0 and rows[1]["kd_loss"] is None
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_kd.vision.progress"]
    assert " kd_weight 0.15," in lines[0] and " kd_weight 0," in lines[1], lines


def test_losses_are_read_once_per_logging_step(monkeypatch):
    """Steps only add on the device; the reduce (and its host sync) happens at logging steps only."""
    from hf_kd.vision.loop import StepResult

    acc = Accelerator(cpu=True)
    reads: list[int] = []
    real_reduce = acc.reduce
    monkeypatch.setattr(acc, "reduce", lambda t, **kw: reads.append(1) or real_reduce(t, **kw))
    # as if launched on 2 processes: a single process needs no reduce, so it would count nothing
    monkeypatch.setattr(type(acc), "num_processes", property(lambda self: 2))
    progress = Progress(acc, max_steps=6, start_step=0, steps_per_epoch=6, logging_steps=3, disable=True)
    for step in range(1, 7):
        one = torch.tensor(float(step))
        progress.step_done(step - 1, StepResult(num_images=4, ce=one, kd=None, loss=one))
        if progress.should_log(step):
            row = progress.log(step, 0.1, {"gpu_hours": 0.0})
            assert row["loss"] == pytest.approx(sum(range(step - 2, step + 1)) / 3)
    assert len(reads) == 2


def test_a_diverged_log_line_stops_the_run(tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path / "nan"), *TINY, "--max_steps", "4", "--learning_rate", "1e12",
            "--logging_steps", "2", "--disable_tqdm"]
    assert run_cli(lambda: run_resnet_kd.main(argv)) == 1
    assert "the training loss became NaN/inf before step 2" in capsys.readouterr().err  # at the log line


def test_resume_true_and_its_errors_are_those_of_the_text_scripts(tmp_path, capsys):
    """``--resume_from_checkpoint true`` means ``latest`` for vision too, and the refusal is the text one."""
    out = tmp_path / "empty"
    out.mkdir()
    assert run_cli(lambda: run_resnet_kd.main(["--output_dir", str(out), *TINY, "--max_steps", "1",
                                                "--resume_from_checkpoint", "true"])) == 2
    err = capsys.readouterr().err
    assert f"error: --resume_from_checkpoint true: no complete checkpoint-<step> folder in {str(out)!r}" in err
    assert not any(out.iterdir())
