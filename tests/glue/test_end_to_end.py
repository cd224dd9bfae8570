"""End to end: two tiny pretraining runs (baseline, KD) -> GLUE sweep on real RTE -> report with speed-up."""

from __future__ import annotations

import gc
import json

import pytest

from tests.support import DATA_DIR

REAL_GLUE = DATA_DIR / "glue"
PRETRAIN = ["--max_steps", "6", "--save_steps", "3", "--logging_steps", "3", "--eval_strategy", "steps",
            "--eval_steps", "3", "--per_device_train_batch_size", "4", "--max_seq_length", "32",
            "--max_train_samples", "64", "--max_eval_samples", "16", "--report_to", "none", "--model_preset", "tiny",
            "--vocab_size", "512", "--use_cpu", "--disable_tqdm", "true"]


@pytest.mark.slow
@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason=f"{REAL_GLUE} is absent")
def test_pretrain_sweep_report(tmp_path, monkeypatch, capsys):
    from glue_eval import report, sweep
    from run_scripts.run_mlm_kd import main as pretrain

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    base, kd = tmp_path / "runs" / "baseline", tmp_path / "runs" / "kd"
    pretrain(["--output_dir", str(base), *PRETRAIN])
    pretrain(["--output_dir", str(kd), "--teacher_model_name_or_path", str(base), "--kd_alpha", "0.5", *PRETRAIN])
    gc.collect()
    gc.freeze()  # keeps the Trainer's gc.collect() after each fine-tuning cheap
    try:
        results = tmp_path / "glue" / "results.jsonl"
        sweep.main(["--runs", str(base), str(kd), "--tasks", "rte", "--seeds", "0", "1", "--glue_dir",
                    str(REAL_GLUE), "--max_train_samples", "32", "--max_eval_samples", "32", "--max_steps", "2",
                    "--per_device_train_batch_size", "8", "--max_seq_length", "64", "--use_cpu",
                    "--results", str(results)])
    finally:
        gc.unfreeze()
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    # checkpoint-3 and checkpoint-6 per run (the final model is checkpoint-6), 2 seeds each
    assert sorted((r["run"], r["checkpoint"], r["seed"]) for r in rows) == sorted(
        (run, f"checkpoint-{s}", seed) for run in ("baseline", "kd") for s in (3, 6) for seed in (0, 1))
    for r in rows:
        state = json.loads((tmp_path / "runs" / r["run"] / r["checkpoint"] / "trainer_state.json").read_text())
        logged = [e["gpu_hours"] for e in state["log_history"] if "gpu_hours" in e and e["step"] <= r["step"]]
        assert r["gpu_hours"] == logged[-1] > 0 and r["step"] == int(r["checkpoint"].split("-")[1])
        assert r["eval_samples"] == {"validation": 32} and 0 <= r["metrics"]["accuracy"] <= 1

    capsys.readouterr()
    out = report.main([str(results), "--baseline", "baseline", "--output_dir", str(tmp_path / "report")])
    md = capsys.readouterr().out
    (s,) = out["speedups"]
    assert s["run"] == "kd" and s["paper"]["verdict"] in ("REPRODUCED", "not reproduced", "inconclusive")
    assert "| kd | " in md and s["paper"]["text"] in md and "machine load can bend it" in md
    assert out["levels"]["tasks"]["rte"]["entries"] == 8  # every line carries its dev set's majority-class level and "GLUE average (BERT Table 1) over 1/8 tasks present (rte" in md
    assert len(out["rows"]) == 4 and all(r["n"] == 2 for r in out["rows"])
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000
    assert len((tmp_path / "report" / "table.csv").read_text().splitlines()) == 5

    loss = report.main(["--from_runs", str(base), str(kd), "--metric", "eval_loss", "--lower_is_better",
                        "--baseline", "baseline", "--output_dir", str(tmp_path / "report_loss")])
    assert loss["speedups"][0]["run"] == "kd"
    assert [r["step"] for r in loss["rows"] if r["run"] == "kd"] == [3, 6]  # eval at 3, 6 (+ final, same step)
    assert (tmp_path / "report_loss" / "curves.png").is_file()
