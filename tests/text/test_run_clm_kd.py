"""run_scripts/run_clm_kd.py end to end on the built-in corpus (tiny everything), and resume after a kill."""

import json

import pytest
from safetensors.torch import load_file

from hf_kd.core.cli_utils import run_cli
from run_scripts.run_clm_kd import main

TINY = ["--model_preset", "tiny", "--vocab_size", "512", "--block_size", "32", "--max_train_samples", "64",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))


def test_baseline_then_kd_run_from_a_llama_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    main(TINY + ["--model_preset", "llama-tiny", "--output_dir", str(teacher), "--max_steps", "3"])
    assert json.loads((teacher / "config.json").read_text())["model_type"] == "llama"
    base = tmp_path / "base"
    m1 = main(TINY + ["--output_dir", str(base), "--max_steps", "4", "--save_steps", "2"])
    assert json.loads((base / "config.json").read_text())["model_type"] == "gpt2"
    assert (base / "model.safetensors").is_file() and (base / "checkpoint-2" / "trainer_state.json").is_file()
    results = json.loads((base / "all_results.json").read_text())
    for key in ("eval_loss", "perplexity", "eval_accuracy", "gpu_hours"):
        assert key in results, key
    assert results["num_teachers"] == 0 and m1["gpu_hours"] > 0
    assert "text-generation" in (base / "README.md").read_text()
    kd = tmp_path / "kd"
    m2 = main(TINY + ["--output_dir", str(kd), "--max_steps", "4", "--teacher_model_name_or_path", str(teacher),
                      "--kd_stop_ratio", "0.5", "--logging_steps", "1"])
    assert m2["kd_stop_step"] == 2 and m2["teacher_forwards"] == 2
    lines = [e for e in json.loads((kd / "trainer_state.json").read_text())["log_history"] if "kd_weight" in e]
    assert [e["kd_weight"] for e in lines] == [0.9, 0.9, 0.0, 0.0]
    assert all("clm_loss" in e for e in lines) and "kd_loss" in lines[0]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    """SIGKILL run_clm_kd.py a random moment after its first checkpoint, resume from 'latest': same final weights."""
    import random

    from tests.support.models import tiny_llama
    from tests.support.scripts import attempt, build_env, script_args

    env = build_env(tmp_path / "env")
    monkeypatch.setenv("HF_KD_CACHE", str(env.cache))
    tiny_llama(vocab_size=env.vocab_size, seed=1).save_pretrained(env.inputs / "teacher")

    def argv(out, *extra):
        return script_args(env, out, "--model_preset", "tiny", "--max_train_samples", "40", "--logging_steps", "1",
                           "--save_strategy", "steps", "--save_steps", "3", "--seed", "7", "--kd_stop_ratio", "0.5",
                           "--kd_alpha", "0.5", "--teacher_model_name_or_path", str(env.inputs / "teacher"), *extra,
                           max_steps=18)

    ref, out = tmp_path / "reference", tmp_path / "resumed"
    main(argv(ref))
    killed, _, _ = attempt(env, argv(out), out, 0, random.Random(7), None, tmp_path / "a0.log", script="run_clm_kd.py")
    assert killed
    killed, _, _ = attempt(env, argv(out, "--resume_from_checkpoint", "latest"), out, 0, None, None,
                           tmp_path / "a1.log", script="run_clm_kd.py")
    assert not killed
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"max weight difference {worst}"
    lines = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in lines] == list(range(1, 19))


def test_missing_teacher_path_is_refused_before_data_prep(tmp_path, capsys):
    """The same up-front check as run_mlm_kd.py (it lives in run_pretraining): one line, nothing written."""
    out = tmp_path / "kd"
    argv = [*TINY, "--output_dir", str(out), "--teacher_model_name_or_path", str(tmp_path / "no_such_teacher")]
    assert run_cli(lambda: main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_teacher" in err[0] and "does not exist" in err[0], err
    assert not out.exists()
