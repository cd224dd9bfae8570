"""A from-scratch ``--model_preset`` brings a learning rate and warm-up that train; explicit flags win."""

from __future__ import annotations

import pytest

import hf_kd.text.pretrain as pretrain


@pytest.fixture
def parsed(monkeypatch):
    """Run a script's ``main`` up to ``run_pretraining`` and return the arguments it would train with."""
    got = {}

    def capture(model_args, data_args, training_args, **kw):
        got["args"] = training_args
        return {}

    monkeypatch.setattr(pretrain, "run_pretraining", capture)

    def run(script: str, *argv: str):
        import importlib

        module = importlib.import_module(f"run_scripts.run_{script}_kd")
        monkeypatch.setattr(module, "run_pretraining", capture)
        module.main(["--output_dir", "unused", "--report_to", "none", *argv])
        return got["args"]

    return run


@pytest.mark.parametrize("script", ["mlm", "clm"])
def test_default_tiny_preset_brings_its_learning_rate_and_warmup(parsed, script):
    args = parsed(script)
    assert args.learning_rate == 2e-3 and args.warmup_steps == 0.06


def test_each_size_has_its_own_rate(parsed):
    assert parsed("mlm", "--model_preset", "base").learning_rate == 5e-4
    assert parsed("clm", "--model_preset", "llama-mini").learning_rate == 1e-3


@pytest.mark.parametrize("flags,lr,warmup", [
    (["--learning_rate", "5e-5"], 5e-5, 0.06),             # the Trainer's default value, typed: still explicit
    (["--learning_rate=1e-4", "--warmup_steps", "0"], 1e-4, 0),
    (["--warmup_steps", "10"], 2e-3, 10),
])
def test_explicit_flags_win_over_the_preset(parsed, flags, lr, warmup):
    args = parsed("mlm", *flags)
    assert args.learning_rate == lr and args.warmup_steps == warmup


def test_config_file_values_count_as_explicit(parsed, tmp_path):
    cfg = tmp_path / "args.yaml"
    cfg.write_text("learning_rate: 3.0e-4\n")
    args = parsed("mlm", "--config", str(cfg))
    assert args.learning_rate == 3e-4 and args.warmup_steps == 0.06


def test_student_from_a_config_keeps_the_trainer_defaults(parsed, tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    args = parsed("mlm", "--config_name", str(tmp_path))
    assert args.learning_rate == 5e-5 and args.warmup_steps == 0
