"""What certifies the product is the product: a ``hf-kd reproduce`` student is the very run ``run_mlm_kd.py`` /
``run_clm_kd.py`` make from the same flags (same final weights, bit for bit), teacher loading included."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_kd.reproduce.presets import CLM_TINY
from hf_kd.reproduce.run import run_protocol
from run_scripts.run_clm_kd import main as run_clm_kd
from run_scripts.run_mlm_kd import main as run_mlm_kd
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import TINY, SpyBackend


def _flags(p, corpus: str, out: Path, teacher: str) -> list[str]:
    """kd_full, seed 0, written out by hand from the preset (not by the code under test)."""
    return ["--train_file", corpus, "--model_preset", p.model_preset, "--vocab_size", str(p.vocab_size),
            "--max_seq_length", str(p.max_seq_length), "--output_dir", str(out), "--max_steps", str(p.steps),
            "--per_device_train_batch_size", str(p.batch_size), "--per_device_eval_batch_size", "64",
            "--learning_rate", str(p.learning_rate), "--warmup_steps", str(p.warmup_ratio),
            "--lr_scheduler_type", "linear", "--weight_decay", "0.01", "--seed", "0", "--data_seed", "0",
            "--eval_strategy", "steps", "--eval_steps", str(p.eval_every), "--logging_steps", str(p.eval_every),
            "--use_cpu", "--report_to", "none", "--kd_alpha", str(p.kd_alpha), "--kd_temperature",
            str(p.kd_temperature), "--kd_positions", p.kd_positions, "--teacher_model_name_or_path", teacher]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_reproduce_student_equals_the_script_run_with_the_same_flags(task, tmp_path, monkeypatch):
    corpus = str(write_tiny_corpus(tmp_path, monkeypatch))
    p = TINY if task == "mlm" else replace(CLM_TINY, **{k: getattr(TINY, k) for k in (
        "vocab_size", "max_seq_length", "batch_size", "steps", "eval_every", "good_teacher_steps", "frontier")})
    spy = SpyBackend(p, corpus)
    res = run_protocol(spy, str(tmp_path / "reproduce"), seeds=1, only=["kd_full"], calibrate=False)
    teacher = next(t for t in (tmp_path / "cache").rglob("teacher.json")).parent
    flags = _flags(p, corpus, tmp_path / "script", str(teacher))
    metrics = (run_mlm_kd if task == "mlm" else run_clm_kd)(flags)
    ours = spy.weights["kd_full-seed0"]
    theirs = load_file(str(tmp_path / "script" / "model.safetensors"))
    shared = sorted(set(ours) & set(theirs))  # tied weights are saved once
    assert len(shared) >= len(theirs) - 1 and len(shared) > 10
    assert all(torch.equal(ours[k], theirs[k]) for k in shared), [k for k in shared if not torch.equal(ours[k], theirs[k])]
    kd = next(r for r in res["runs"] if r["variant"] == "kd_full")
    assert [e["eval_loss"] for e in kd["log_history"] if "eval_loss" in e][-1] == metrics["eval_loss"]
    assert kd["teacher_forwards"] == metrics["teacher_forwards"] == p.steps
