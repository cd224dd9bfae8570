"""GLUE arguments built on TrainingArguments, sweep progress, quiet model loading, docs."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys

import pytest
from transformers import TrainingArguments

import glue_eval
from glue_eval import run_glue, sweep
from glue_eval.testing import tiny_checkpoint, write_glue_fixture
from tests.support import REPO


def test_finetune_arguments_are_training_arguments_without_redeclared_fields():
    from glue_eval.args import FinetuneArguments, GlueArguments
    from glue_eval.report import ReportArguments

    assert issubclass(FinetuneArguments, TrainingArguments)
    ta = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    own = {f.name: f for f in dataclasses.fields(FinetuneArguments)}
    assert set(own) == set(ta) and all(own[n] is ta[n] or own[n].default == ta[n].default for n in ta)
    for extra in (GlueArguments, run_glue.RunGlueArguments, sweep.SweepArguments):
        clash = {f.name for f in dataclasses.fields(extra)} & set(ta)
        assert not clash, (extra.__name__, clash)
        assert all(f.metadata.get("help") for f in dataclasses.fields(extra)), extra.__name__
    assert all(f.metadata.get("help") for f in dataclasses.fields(ReportArguments))


def test_user_training_flags_reach_the_trainer(tmp_path, monkeypatch):
    import glue_eval.finetune as finetune_mod

    glue, ckpt = write_glue_fixture(tmp_path / "glue", tasks=["rte"]), tiny_checkpoint(tmp_path / "ck")
    seen = []

    class Recording(finetune_mod.Trainer):
        def __init__(self, *a, args=None, **k):
            seen.append(args)
            super().__init__(*a, args=args, **k)

    monkeypatch.setattr(finetune_mod, "Trainer", Recording)
    argv = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "rte", "--use_cpu", "--max_steps",
            "1", "--output_dir", str(tmp_path / "o")]
    run_glue.main(argv)
    d = seen[-1]
    assert d.report_to in ("none", ["none"], []) and d.disable_tqdm is True and d.save_strategy == "no"
    assert d.learning_rate == 3e-5 and d.per_device_train_batch_size == 32  # the table's rte row
    run_glue.main([*argv[:-1], str(tmp_path / "o2"), "--optim", "adafactor", "--lr_scheduler_type", "constant",
                   "--max_grad_norm", "0.5", "--disable_tqdm", "false", "--save_strategy", "steps",
                   "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--weight_decay", "0.0"])
    u = seen[-1]
    assert (u.optim, u.lr_scheduler_type, u.max_grad_norm, u.disable_tqdm) == ("adafactor", "constant", 0.5, False)
    assert (u.save_strategy, u.num_train_epochs, u.per_device_train_batch_size, u.weight_decay) == (
        "steps", 3.0, 4, 0.0)  # 3 epochs although the rte row says 5: a given flag wins even at its default
    from glue_eval.args import parse_glue_args

    _, _, fargs = parse_glue_args((run_glue.RunGlueArguments,), [
        "--model_name_or_path", "m", "--output_dir", "o", "--report_to", "tensorboard", "--bf16", "--use_cpu",
        "--torch_compile"])
    assert fargs.report_to == ["tensorboard"] and fargs.bf16 and fargs.torch_compile
    assert {"report_to", "bf16", "torch_compile", "output_dir"} <= fargs.given
    with pytest.raises(ValueError, match="--eval_strategy 'epoch' is not supported"):
        parse_glue_args((run_glue.RunGlueArguments,), ["--model_name_or_path", "m", "--eval_strategy", "epoch"])
    with pytest.raises(ValueError, match="--seed is not used .* expected --seeds"):
        parse_glue_args((run_glue.RunGlueArguments,), ["--model_name_or_path", "m", "--seed", "1"])


def test_sweep_progress_bar_and_no_load_report(tmp_path, capfd, monkeypatch):
    from transformers.utils import logging as hf_logging

    for handler in hf_logging._get_library_root_logger().handlers:  # made at import, before capfd's stderr
        if type(handler) is logging.StreamHandler:
            monkeypatch.setattr(handler, "stream", sys.stderr)
    glue = write_glue_fixture(tmp_path / "glue", n_train=8, n_dev=6, tasks=["rte"])
    run = tmp_path / "base"
    for s in (2, 4):
        ck = tiny_checkpoint(run / f"checkpoint-{s}")
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": s, "log_history": [
            {"step": 1, "gpu_hours": 0.1}]}))
    capfd.readouterr()
    sweep.main(["--runs", str(run), "--tasks", "rte", "--seeds", "0", "1", "--glue_dir", str(glue), "--results",
                str(tmp_path / "r.jsonl"), "--max_steps", "1", "--use_cpu"])
    err = capfd.readouterr().err
    assert re.search(r"GLUE fine-tunes: 100%.*4/4 \[", err), err[-2000:]
    assert "LOAD REPORT" not in err
    assert "Model config" not in err and '"architectures"' not in err  # no fine-tune's full config
    from transformers import AutoModelForSequenceClassification  # the table transformers prints without us

    AutoModelForSequenceClassification.from_pretrained(str(run / "checkpoint-2"), num_labels=2)
    assert "LOAD REPORT" in capfd.readouterr().err


def test_public_api_exports():
    for name in ("run_sweep", "evaluate_on_glue", "build_report", "summarize", "glue_average",
                 "glue_leaderboard_score", "find_checkpoints", "GlueArguments", "FinetuneArguments",
                 "SweepArguments", "ReportArguments", "RunGlueArguments"):
        assert name in glue_eval.__all__ and getattr(glue_eval, name).__doc__, name


def test_glue_docs_stand_alone_and_follow_the_walkthrough():
    docs = (REPO / "docs" / "glue.md").read_text()
    sources = [docs] + [p.read_text() for p in (REPO / "glue_eval").glob("*.py")]
    assert not [s for s in sources if "../shared" in s or "shared/data" in s]
    assert "--runs runs/baseline runs/kd" in docs and "--baseline baseline" in docs
    assert "nyu-mll/glue" in docs and "--glue_dir" in docs
    assert "the BERT recipe" not in docs.replace("not the BERT recipe", "")
