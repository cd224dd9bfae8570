"""``glue_eval.run_glue``: fine-tune a tiny checkpoint on every task of a GLUE-format fixture."""

from __future__ import annotations

import json
import sys

import pytest

from glue_eval import run_glue
from glue_eval.tasks import TASKS
from glue_eval.testing import tiny_checkpoint, write_glue_fixture

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--use_cpu"]



@pytest.fixture
def glue_and_model(tmp_path):
    return write_glue_fixture(tmp_path / "glue", n_train=16, n_dev=8), tiny_checkpoint(tmp_path / "ckpt")


def test_all_tasks_results_lines(tmp_path, glue_and_model):
    glue, ckpt = glue_and_model
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "all", "--seeds", "0",
            "--output_dir", str(out), "--learning_rate", "5e-5", "--hparam_overrides", "rte.learning_rate=1e-4", *FAST]
    summary = run_glue.main(argv)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["task"] for r in lines] == list(TASKS) and {r["seed"] for r in lines} == {0}
    by_task = {r["task"]: r for r in lines}
    for task, r in by_task.items():
        assert set(r["metrics"]) == {*TASKS[task].metrics, "eval_loss"}, task
        assert r["run"] == "ckpt" and r["checkpoint"] == "final" and r["finetune_steps"] == 2
        assert r["train_samples"] == 16 and r["finetune_seconds"] > 0
        for k in TASKS[task].metrics:
            assert -1.0 <= r["metrics"][k] <= 1.0, (task, k)
        assert r["hparams"]["learning_rate"] == (1e-4 if task == "rte" else 5e-5)
        assert r["hparams"]["max_seq_length"] == 64  # the table's 128, cut to the model's 64 positions
    for k in ("accuracy", "f1"):
        assert 0.0 <= by_task["mrpc"]["metrics"][k] <= 1.0
    assert by_task["mnli"]["eval_samples"] == {"validation_matched": 8, "validation_mismatched": 8}
    assert by_task["stsb"]["hparams"]["num_train_epochs"] == 5.0
    # the levels a fine-tune that learned nothing reaches on these dev labels (labels alternate 0, 1, ...)
    for task, r in by_task.items():
        assert set(r["levels"]["majority"]) == set(TASKS[task].metrics), task
    assert by_task["mrpc"]["levels"]["majority"]["accuracy"] == 0.5 and by_task["mrpc"]["levels"]["chance"]["f1"] == 0.5
    assert by_task["mnli"]["levels"]["majority"]["accuracy_matched"] == 3 / 8  # labels 0, 1, 2, 0, 1, 2, 0, 1
    assert by_task["stsb"]["levels"]["majority"] == {"pearson": 0.0, "spearmanr": 0.0}
    assert by_task["rte"]["score"] == pytest.approx(100 * by_task["rte"]["metrics"]["accuracy"])
    g = summary["glue_average"]
    assert g["n_seeds"] == 1 and "WNLI excluded" in g["what"] and 0 <= g["mean"] <= 100
    assert json.loads((out / "summary.json").read_text())["glue_average"]["mean"] == pytest.approx(g["mean"])
    # a rerun finds everything done: no new line
    run_glue.main(argv)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(TASKS)


def test_two_seeds_differ_and_summarize(tmp_path, glue_and_model):
    glue, ckpt = glue_and_model
    summary = run_glue.main(["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "rte,stsb",
                             "--seeds", "0", "1", "--output_dir", str(tmp_path / "o"), *FAST])
    lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [(r["task"], r["seed"]) for r in lines] == [("stsb", 0), ("stsb", 1), ("rte", 0), ("rte", 1)]
    assert lines[0]["metrics"]["eval_loss"] != lines[1]["metrics"]["eval_loss"]  # the seed changes the head
    assert summary["tasks"]["stsb"]["pearson"]["n"] == 2
    assert "2/8 tasks" in summary["glue_average"]["what"]


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, glue_and_model, monkeypatch, capsys):
    glue, ckpt = glue_and_model
    out = tmp_path / "never"
    base = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--output_dir", str(out)]
    with pytest.raises(ValueError, match="unknown GLUE task 'foo'"):
        run_glue.main([*base, "--tasks", "rte,foo"])
    (glue / "MNLI" / "dev_matched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="MNLI/dev_matched.tsv"):
        run_glue.main([*base, "--tasks", "all"])
    monkeypatch.setattr(sys, "argv", ["run_glue", *base, "--tasks", "mnli"])
    assert run_glue.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "validation_matched" in err[0]
    assert not out.exists()
