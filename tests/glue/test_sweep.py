"""``glue_eval.sweep``: checkpoint discovery with their cost, and resuming an interrupted sweep."""

from __future__ import annotations

import json

import pytest

import glue_eval.finetune as finetune_mod
from glue_eval import sweep
from glue_eval.results import ResultsFile, read_records
from glue_eval.testing import tiny_checkpoint, write_glue_fixture

FAST = ["--max_steps", "1", "--per_device_train_batch_size", "8", "--use_cpu", "--max_eval_samples", "6"]
LOG = [{"step": 1, "loss": 5.0, "gpu_hours": 0.1}, {"step": 1, "eval_loss": 4.0, "gpu_hours": 0.1},
       {"step": 3, "loss": 4.0, "gpu_hours": 0.3}, {"step": 5, "loss": 3.0, "gpu_hours": 0.5}]



def fake_run(root, steps=(2, 4), final_step=5, final_gpu_hours=0.55):
    """A pretraining run folder as run_mlm_kd.py leaves it: checkpoint-*/ with trainer_state.json, final model."""
    for s in steps:
        ck = tiny_checkpoint(root / f"checkpoint-{s}")
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": s, "log_history": [
            e for e in LOG if e["step"] <= s]}))
    if final_step is not None:
        tiny_checkpoint(root)
        (root / "trainer_state.json").write_text(json.dumps({"global_step": final_step, "log_history": LOG}))
        (root / "all_results.json").write_text(json.dumps({"gpu_hours": final_gpu_hours, "eval_loss": 3.0}))
    return root


def test_find_checkpoints_cost_and_step(tmp_path):
    found = sweep.find_checkpoints(fake_run(tmp_path / "base"))
    # last gpu_hours at or before the step: checkpoint-2 <- step 1, checkpoint-4 <- step 3; final <- all_results
    assert [(c.checkpoint, c.step, c.gpu_hours) for c in found] == [
        ("checkpoint-2", 2, 0.1), ("checkpoint-4", 4, 0.3), ("final", 5, 0.55)]
    same = sweep.find_checkpoints(fake_run(tmp_path / "same", steps=(5,), final_step=5))
    assert [c.checkpoint for c in same] == ["checkpoint-5"]  # the final model is that checkpoint
    assert sweep.gpu_hours_at({"log_history": [], "stateful_callbacks": {"CostCallback": {"attributes": {
        "train_seconds": 360.0, "num_processes": 2}}}}, 3, "x") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no gpu_hours at or before step 3"):
        sweep.gpu_hours_at({"log_history": [{"step": 4, "gpu_hours": 1.0}]}, 3, "ck")
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        sweep.find_checkpoints((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_interrupted_sweep_resumes_without_duplicates_or_losses(tmp_path, monkeypatch):
    glue = write_glue_fixture(tmp_path / "glue", n_train=8, n_dev=6, tasks=["rte", "stsb"])
    run = fake_run(tmp_path / "base")
    results = tmp_path / "res" / "results.jsonl"
    argv = ["--runs", str(run), "--tasks", "rte", "--seeds", "0", "1", "--glue_dir", str(glue),
            "--results", str(results), *FAST]
    real, calls = finetune_mod.finetune, []

    def crashing(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while computing the 4th entry
        calls.append(a[2:4])
        return real(*a, **k)

    monkeypatch.setattr(finetune_mod, "finetune", crashing)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(argv)
    first = results.read_text()
    assert len(first.splitlines()) == 3
    with open(results, "a") as f:
        f.write('{"run": "base", "checkpoint": "final", "ta')  # a write cut by the kill
    monkeypatch.setattr(finetune_mod, "finetune", real)
    new = sweep.main(argv)
    text = results.read_text()
    assert text.startswith(first) and len(new) == 3  # the first three untouched, only the rest computed
    rows = [json.loads(x) for x in text.splitlines()]
    keys = [(r["checkpoint"], r["task"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 6
    assert set(keys) == {(c, "rte", s) for c in ("checkpoint-2", "checkpoint-4", "final") for s in (0, 1)}
    assert {(r["checkpoint"], r["step"], r["gpu_hours"]) for r in rows} == {
        ("checkpoint-2", 2, 0.1), ("checkpoint-4", 4, 0.3), ("final", 5, 0.55)}
    assert all(r["run"] == "base" and 0 <= r["metrics"]["accuracy"] <= 1 and r["finetune_seconds"] > 0 for r in rows)
    assert sweep.main(argv) == [] and results.read_text() == text  # a third run has nothing to do


def test_results_file_repairs_only_a_cut_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    rf = ResultsFile(p)
    rf.append({"run": "a", "checkpoint": "c", "task": "rte", "seed": 0, "x": 1})
    with pytest.raises(ValueError, match="already in"):
        rf.append({"run": "a", "checkpoint": "c", "task": "rte", "seed": 0})
    p.write_text(p.read_text() + '{"run": "a", "chec')
    assert len(read_records(p)[0]) == 1
    rf = ResultsFile(p)
    assert p.read_text().count("\n") == 1 and rf.done({"run": "a", "checkpoint": "c", "task": "rte", "seed": 0})
    p.write_text('{"run": 1}\nnot json\n{"run": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        ResultsFile(p)


def test_sweep_errors_before_writing(tmp_path):
    results = tmp_path / "r" / "results.jsonl"
    with pytest.raises(FileNotFoundError, match="'.*nope' is not a folder"):
        sweep.main(["--runs", str(tmp_path / "nope"), "--results", str(results)])
    run = fake_run(tmp_path / "base", steps=(2,), final_step=None)
    with pytest.raises(ValueError, match="unknown GLUE task 'bogus'"):
        sweep.main(["--runs", str(run), "--tasks", "bogus", "--results", str(results)])
    assert not results.parent.exists()
