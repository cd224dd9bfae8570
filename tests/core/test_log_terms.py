"""Logged loss terms: their reduction over ranks and over a logging window."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import default_data_collator

from hf_kd import DistillationTrainer
from tests.support import REPO
from tests.support.data import ListDataset, mlm_examples, quick_args
from tests.support.models import tiny_bert


def test_logged_terms_not_summed_over_ranks_without_token_averaging():
    """without average_tokens_across_devices each rank's term is its own mean: average ranks."""
    from hf_kd.core.log_terms import window_terms

    # two ranks whose own step means are 8.0 and 8.6, one step: summed over ranks that is 16.6
    assert window_terms(16.6, 0.0, 1, 0, 0.0, world_size=2, tokens_averaged_across_devices=False)["mlm_loss"] == \
        pytest.approx(8.3)
    # with the global count each rank holds its share of the global mean: the sum is the mean
    assert window_terms(8.3, 0.0, 1, 0, 0.0, world_size=2, tokens_averaged_across_devices=True)["mlm_loss"] == \
        pytest.approx(8.3)
    assert window_terms(4.0, 6.0, 2, 2, 0.5, world_size=4, tokens_averaged_across_devices=False) == \
        {"mlm_loss": 0.5, "kd_loss": 0.75, "kd_weight": 0.5}


def test_window_terms_divide_kd_by_kd_steps():
    """a window of 2 steps with 1 KD step: kd_loss over 1 step, kd_weight alpha / 2."""
    from hf_kd.core.log_terms import window_terms

    assert window_terms(8.0, 3.0, 2, 1, 0.9) == {"mlm_loss": 4.0, "kd_loss": 3.0, "kd_weight": 0.45}
    assert window_terms(8.0, 0.0, 2, 0, 0.9) == {"mlm_loss": 4.0, "kd_weight": 0.0}


def _train_logs(tmp_path, logging_steps):
    args = quick_args(tmp_path, max_steps=4, per_device_train_batch_size=4, learning_rate=0.01, kd_stop_steps=3,
                      logging_steps=logging_steps)
    trainer = DistillationTrainer(model=tiny_bert(), teacher_model=tiny_bert(seed=1, layers=1), args=args,
                                  train_dataset=ListDataset(mlm_examples(16)), data_collator=default_data_collator)
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e]


def test_kd_loss_not_diluted_when_window_straddles_stop_step(tmp_path):
    """logging_steps=2, KD stops at step 3 of 4: the second window has one KD step of two."""
    per_step = _train_logs(tmp_path / "one", 1)
    windows = _train_logs(tmp_path / "two", 2)
    assert [e["step"] for e in windows] == [2, 4]
    first, second = windows
    assert first["kd_weight"] == pytest.approx(0.9)
    assert first["kd_loss"] == pytest.approx((per_step[0]["kd_loss"] + per_step[1]["kd_loss"]) / 2, rel=1e-5)
    assert second["kd_loss"] == pytest.approx(per_step[2]["kd_loss"], rel=1e-5)  # the window's only KD step
    assert second["kd_weight"] == pytest.approx(0.45)  # the mean weight over the window: 0.9 then 0.0
    assert second["mlm_loss"] == pytest.approx((per_step[2]["mlm_loss"] + per_step[3]["mlm_loss"]) / 2, rel=1e-5)
    # loss is the mean of the per-step weighted losses: consistent with the per-step lines
    assert second["loss"] == pytest.approx((per_step[2]["loss"] + per_step[3]["loss"]) / 2, rel=1e-4)


WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
from tests.support.dist_worker import build_trainer, exit_cleanly
out = Path(sys.argv[1])
trainer = build_trainer("ddp", out, 2, teachers=0, max_steps=2, kd_stop=0, average_tokens_across_devices=False)
trainer.train()
(out / f"rank{{trainer.args.process_index}}.json").write_text(json.dumps(trainer.state.log_history))
exit_cleanly()  # barrier, then exit without the interpreter teardown that was seen to abort gloo ranks
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_without_token_averaging_log_the_rank_mean(tmp_path):
    """End to end: 2-process DDP (gloo), no token averaging: mlm_loss == loss (not 2x)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]
    for rank in (0, 1):
        lines = [e for e in json.loads((tmp_path / f"rank{rank}.json").read_text()) if "loss" in e]
        assert len(lines) == 2
        for e in lines:  # no teacher: the loss is the MLM term, averaged over the ranks by the Trainer
            assert e["mlm_loss"] == pytest.approx(e["loss"], rel=1e-4), e


def test_one_window_serves_text_and_vision_keys():
    """The same on-device window logs text's hard-label key and vision's task_loss plus the objective."""
    import torch

    from hf_kd.core.log_terms import TermWindow

    text, vision = TermWindow("clm_loss"), TermWindow("task_loss", with_loss=True)
    for w in (text, vision):
        w.add(0, torch.tensor(2.0), torch.tensor(1.0), loss=torch.tensor(1.5))
        w.add(1, torch.tensor(4.0), None, loss=torch.tensor(4.0))
    assert vision.finite() and not vision.empty
    assert text.read(0.5, torch.device("cpu")) == {"clm_loss": 3.0, "kd_loss": 1.0, "kd_weight": 0.25}
    assert vision.read(0.5, torch.device("cpu")) == {"loss": 2.75, "task_loss": 3.0, "kd_loss": 1.0,
                                                     "kd_weight": 0.25}
    assert vision.empty  # read starts a new window
    vision.add(2, torch.tensor(float("nan")), None)
    assert not vision.finite()
