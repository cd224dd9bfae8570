"""Model card and ``--push_to_hub`` (offline: the Hub is unreachable; uploads go to a closed local port)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hf_kd.core.cli_utils import run_cli
from hf_kd.core.hub import HubPushError, push_folder
from run_scripts.run_mlm_kd import main

FAKE_TOKEN = "hf_FAKEtoken0123456789abcdefXYZ"
TINY = ["--model_preset", "tiny", "--vocab_size", "512", "--max_seq_length", "32", "--max_train_samples", "32",
        "--max_eval_samples", "8", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true", "--save_steps", "1"]


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path, monkeypatch):
    """Tokenizer cache in tmp; the Hub at a closed port (fails at once); the Trainer's own push forbidden."""
    from huggingface_hub import constants
    from transformers import Trainer

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_trainer_push(*_, **__):
        raise AssertionError("the Trainer's own Hub machinery ran during training")

    monkeypatch.setattr(Trainer, "init_hf_repo", no_trainer_push)
    monkeypatch.setattr(Trainer, "push_to_hub", no_trainer_push)


def _files_containing(folder: Path, needle: str) -> list[str]:
    return [str(f) for f in folder.rglob("*") if f.is_file() and needle.encode() in f.read_bytes()]


def test_model_card_records_the_run_and_folder_is_a_model_repo(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    base, kd = tmp_path / "base", tmp_path / "kd"
    main(TINY + ["--output_dir", str(base), "--max_steps", "2"])
    metrics = main(TINY + ["--output_dir", str(kd), "--max_steps", "3", "--teacher_model_name_or_path", str(base),
                           "--kd_alpha", "0.5", "--kd_temperature", "2", "--kd_stop_steps", "2",
                           "--hub_token", FAKE_TOKEN])
    card = ModelCard.load(kd / "README.md")
    data = card.data.to_dict()
    assert {"hf-kd", "knowledge-distillation"} <= set(data["tags"])
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "fill-mask"
    facts = data["hf_kd"]
    assert facts["teachers"] == [str(base)]
    assert (facts["kd_alpha"], facts["kd_temperature"], facts["kd_stop_step"]) == (0.5, 2.0, 2)
    assert facts["kd_teacher_selection"] == "mean" and facts["train_steps"] == 3
    assert facts["training_data"].startswith("built-in corpus")
    assert facts["gpu_hours"] == pytest.approx(metrics["gpu_hours"]) and facts["gpu_hours"] > 0
    assert facts["device"] == "cpu"  # the cost is named after the device it was spent on; the key stays gpu_hours
    for text in (str(base), "kd_alpha", "0.5", "KD stop step", "CPU-hours (training)", "training data"):
        assert text in card.text, text
    # a loadable Hub model repo: safetensors weights, config, tokenizer, card
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (kd / name).is_file(), name
    AutoModelForMaskedLM.from_pretrained(kd)
    AutoTokenizer.from_pretrained(kd)
    assert _files_containing(kd, FAKE_TOKEN) == []  # not in the card, results, checkpoints or training_args.bin
    # the no-KD baseline is not tagged as distilled and lists no KD settings
    base_card = ModelCard.load(base / "README.md")
    baseline = base_card.data.to_dict()
    assert "knowledge-distillation" not in baseline["tags"] and baseline["hf_kd"]["teachers"] == []
    assert not [k for k in baseline["hf_kd"] if k.startswith("kd_")]
    assert "temperature" not in base_card.text and "kd_alpha" not in base_card.text
    # usage: no --hub_model_id -> a placeholder the user fills in (said so), and the run folder itself
    assert f'model="<your-username>/{kd.name}"' in card.text and "placeholder" in card.text
    assert f'model="{kd}"' in card.text
    # what Trainer.create_model_card gives: hyperparameters, framework versions, evaluation results
    for text in ("### Training hyperparameters", "- learning_rate:", "### Framework versions", "- Transformers ",
                 "## Evaluation results", "perplexity"):
        assert text in card.text, text
    (index,) = data["model-index"]
    assert {m["type"] for m in index["results"][0]["metrics"]} >= {"eval_loss", "perplexity"}


def test_unsupported_hub_strategy_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    argv = TINY + ["--output_dir", str(out), "--max_steps", "1", "--push_to_hub", "--hub_model_id", "me/x",
                   "--hub_strategy", "every_save"]
    assert run_cli(lambda: main(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--hub_strategy 'every_save' is not supported" in lines[0] and "'end'" in lines[0]
    assert not out.exists()


def test_push_without_connection_is_one_line_error(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    argv = TINY + ["--output_dir", str(out), "--max_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-kd",
                   "--hub_token", FAKE_TOKEN]
    with caplog.at_level(logging.INFO):
        status = run_cli(lambda: main(argv))
    err = capsys.readouterr()
    assert status == 2
    lines = [line for line in err.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "could not push" in lines[0] and "me/tiny-kd" in lines[0], err.err[-2000:]
    assert "Traceback" not in err.err
    for text in (err.out, err.err, caplog.text):
        assert FAKE_TOKEN not in text
    # training finished and the folder is complete: it can be uploaded later
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert 'model="me/tiny-kd"' in (out / "README.md").read_text()  # the usage line names the repo asked for
    assert _files_containing(out, FAKE_TOKEN) == []


def test_push_folder_error_names_repo_and_hides_token(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HubPushError) as info:
        push_folder(tmp_path, "me/x", token=FAKE_TOKEN)
    message = str(info.value)
    assert "\n" not in message and "me/x" in message and "127.0.0.1:9" in message and "hf upload" in message
    assert FAKE_TOKEN not in message
    assert isinstance(info.value, ConnectionError)


def test_push_to_hub_in_offline_mode_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """Offline, the upload can only fail, and only after the whole training: refuse it up front, nothing written."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "offline"
    assert run_cli(lambda: main(TINY + ["--output_dir", str(out), "--max_steps", "1", "--push_to_hub"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --push_to_hub") and "HF_HUB_OFFLINE" in err[0], err
    assert not out.exists()
