"""run_scripts/run_mlm_kd.py end to end on the built-in corpus (tiny everything)."""

import json

import pytest

from run_scripts.run_mlm_kd import main

TINY = ["--model_preset", "tiny", "--vocab_size", "512", "--max_seq_length", "32", "--max_train_samples", "64",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))


def test_baseline_then_kd_run(tmp_path):
    base = tmp_path / "base"
    m1 = main(TINY + ["--output_dir", str(base), "--max_steps", "4", "--save_steps", "2"])
    assert (base / "model.safetensors").is_file() and (base / "checkpoint-2" / "trainer_state.json").is_file()
    results = json.loads((base / "all_results.json").read_text())
    for key in ("eval_loss", "perplexity", "eval_accuracy", "gpu_hours"):
        assert key in results, key
    assert results["num_teachers"] == 0 and results["teacher_forwards"] == 0
    assert m1["gpu_hours"] > 0
    kd = tmp_path / "kd"
    m2 = main(TINY + ["--output_dir", str(kd), "--max_steps", "4", "--teacher_model_name_or_path", str(base),
                      "--kd_stop_ratio", "0.5", "--logging_steps", "1"])
    assert m2["kd_stop_step"] == 2 and m2["teacher_forwards"] == 2
    state = json.loads((kd / "trainer_state.json").read_text())
    weights = [e["kd_weight"] for e in state["log_history"] if "kd_weight" in e]
    assert weights == [0.9, 0.9, 0.0, 0.0]


def test_json_arguments_file_and_final_metrics(tmp_path, capsys):
    args = {"model_preset": "tiny", "vocab_size": 512, "max_seq_length": 32, "max_train_samples": 64,
            "max_eval_samples": 16, "per_device_train_batch_size": 4, "report_to": "none", "use_cpu": True,
            "output_dir": str(tmp_path / "j"), "max_steps": 2}
    f = tmp_path / "args.json"
    f.write_text(json.dumps(args))
    metrics = main([str(f)])
    assert (tmp_path / "j" / "all_results.json").is_file()
    assert metrics["eval_loss"] > 0 and metrics["num_teachers"] == 0
    # The end of the job prints and saves the final metrics, as transformers' run_mlm.py does.
    out = capsys.readouterr().out
    assert "***** eval metrics *****" in out and "perplexity" in out and "eval_loss" in out
    saved = json.loads((tmp_path / "j" / "eval_results.json").read_text())
    assert saved["eval_loss"] == pytest.approx(metrics["eval_loss"]) and saved["perplexity"] > 1
    assert (tmp_path / "j" / "train_results.json").is_file()
