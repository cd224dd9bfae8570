"""``--resume_from_checkpoint``: one resolution for every task (text's ``trainer_state.json``, vision's marker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_kd.core.checkpointing import STATE_FILE, check_run_dir, resolve_resume
from hf_kd.core.errors import UserError

VISION_MARKER = "training_state.json"


def _checkpoint(folder: Path, state_file: str) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
    (folder / state_file).write_text(json.dumps({"step": 1}))
    return folder


@pytest.mark.parametrize("state_file", [STATE_FILE, VISION_MARKER])
def test_latest_and_true_name_the_newest_complete_checkpoint(tmp_path, state_file):
    _checkpoint(tmp_path / "checkpoint-2", state_file)
    newest = _checkpoint(tmp_path / "checkpoint-10", state_file)
    (tmp_path / "checkpoint-12").mkdir()  # a save killed before its marker
    for form in ("latest", "true", "True", True):
        assert resolve_resume(tmp_path, form, state_file) == newest
    for form in (None, False, "", "false", "None"):
        assert resolve_resume(tmp_path, form, state_file) is None
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-2"), state_file) == tmp_path / "checkpoint-2"


@pytest.mark.parametrize("state_file", [STATE_FILE, VISION_MARKER])
def test_bad_resume_values_fail_with_the_same_text_whatever_the_marker(tmp_path, state_file):
    with pytest.raises(UserError, match=r"^--resume_from_checkpoint true: no complete checkpoint-<step> folder in "):
        resolve_resume(tmp_path, "true", state_file)
    with pytest.raises(UserError, match=r"'.*nope' does not exist; expected a checkpoint-<step> folder or 'latest'$"):
        resolve_resume(tmp_path, str(tmp_path / "nope"), state_file)
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(UserError, match=rf"is not a complete checkpoint: it has no {state_file}; pass another"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-3"), state_file)


def test_a_fresh_run_refuses_a_non_empty_folder_and_a_resumed_one_does_not(tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-1", STATE_FILE)
    with pytest.raises(UserError, match="is not empty; pass --overwrite_output_dir"):
        check_run_dir(tmp_path, None, overwrite=False)
    assert check_run_dir(tmp_path, None, overwrite=True) is None
    assert check_run_dir(tmp_path, "latest", overwrite=False) == ckpt
