"""GLUE harness robustness: diverged fine-tunes, incomplete checkpoints, the results key, the lr grid, both GLUE scores, the report."""

from __future__ import annotations

import json
import logging
import os

import pytest

from glue_eval import metrics, report, run_glue, sweep
from glue_eval.testing import tiny_checkpoint, write_glue_fixture

FAST = ["--max_steps", "1", "--per_device_train_batch_size", "8", "--use_cpu", "--max_eval_samples", "6"]



def fake_run(root, steps=(2, 4), final_step=5):
    """A pretraining run folder: checkpoint-*/ (model, tokenizer, trainer_state.json) and the final model."""
    log = [{"step": s, "loss": 1.0, "gpu_hours": 0.1 * s} for s in range(1, 6)]
    for s in steps:
        ck = tiny_checkpoint(root / f"checkpoint-{s}")
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": s, "log_history": log[:s]}))
    if final_step is not None:
        tiny_checkpoint(root)
        (root / "trainer_state.json").write_text(json.dumps({"global_step": final_step, "log_history": log}))
        (root / "all_results.json").write_text(json.dumps({"gpu_hours": 0.55}))
    return root


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- a diverged fine-tune -------------------------------------------------------------------------
def test_diverged_task_excluded_from_average_with_mark():
    per_task = {"rte": {"accuracy": 0.6, "eval_loss": 0.7},
                "stsb": {"pearson": None, "spearmanr": None, "eval_loss": None}}
    avg = metrics.glue_average(per_task)
    assert avg.value == pytest.approx(60.0) and avg.tasks == ["rte"] and avg.diverged == ["stsb"]
    assert "stsb diverged" in avg.label
    score = metrics.glue_leaderboard_score(per_task)
    assert score.value == pytest.approx(60.0) and score.diverged == ["stsb"]


def test_diverged_finetune_reported_rerun_and_report_survive(tmp_path, capsys):
    glue, ckpt = write_glue_fixture(tmp_path / "glue", tasks=["stsb", "rte"]), tiny_checkpoint(tmp_path / "ck")
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "stsb,rte", "--seeds", "0",
            "--hparam_overrides", "stsb.learning_rate=1e30", "--output_dir", str(out), *FAST, "--max_steps", "3"]
    summary = run_glue.main(argv)
    by_task = {r["task"]: r for r in lines(out / "results.jsonl")}
    assert by_task["stsb"]["diverged"] is True and by_task["rte"]["diverged"] is False
    assert summary["diverged"] == ["stsb seed 0"]
    g = summary["glue_average"]
    assert g["mean"] == pytest.approx(100 * by_task["rte"]["metrics"]["accuracy"]) and "stsb diverged" in g["what"]
    printed = capsys.readouterr().out
    assert "| stsb | diverged |" in printed and "stsb diverged" in printed
    assert json.loads((out / "summary.json").read_text())["diverged"] == ["stsb seed 0"]
    assert run_glue.main(argv)["diverged"] == ["stsb seed 0"]  # the rerun neither crashes nor recomputes
    assert len(lines(out / "results.jsonl")) == 2
    rep = report.main([str(out / "results.jsonl"), "--baseline", "ck", "--output_dir", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "diverged" in md and "ck/final/seed 0: stsb" in md and rep["rows"] == [], md


def test_old_lines_with_nulls_count_as_diverged(tmp_path):
    res = tmp_path / "r.jsonl"
    rows = [{"run": r, "checkpoint": "checkpoint-1", "step": 1, "gpu_hours": 1.0, "task": t, "seed": 0,
             "metrics": m} for r in ("base", "kd") for t, m in
            (("rte", {"accuracy": 0.6}), ("stsb", {"pearson": None, "spearmanr": None} if r == "kd" else
                                          {"pearson": 0.5, "spearmanr": 0.5}))]
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = report.main([str(res), "--baseline", "base", "--output_dir", str(tmp_path / "rep")])
    assert [r["run"] for r in out["rows"]] == ["base"]
    assert "kd/checkpoint-1/seed 0: stsb" in (tmp_path / "rep" / "report.md").read_text()


# -- incomplete checkpoints ---------------------------------------------------------------------------
def test_incomplete_checkpoints_skipped_with_one_warning_each(tmp_path, caplog):
    glue = write_glue_fixture(tmp_path / "glue", n_train=8, n_dev=6, tasks=["rte"])
    run = fake_run(tmp_path / "base", steps=(2, 4, 6))
    (run / "checkpoint-2" / "model.safetensors").unlink()  # no model weights
    (run / "checkpoint-6" / "trainer_state.json").unlink()  # still being written
    results = tmp_path / "results.jsonl"
    with caplog.at_level(logging.WARNING, logger="glue_eval"):
        new = sweep.main(["--runs", str(run), "--tasks", "rte", "--glue_dir", str(glue), "--results", str(results),
                          *FAST])
    assert sorted(r["checkpoint"] for r in new) == ["checkpoint-4", "final"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("glue")]
    assert len(warned) == 2 and len([w for w in warned if "\n" in w]) == 0
    assert any("checkpoint-2" in w and "no model weights" in w for w in warned)
    assert any("checkpoint-6" in w and "trainer_state.json" in w for w in warned)


# -- the results key ------------------------------------------------------------------------------
def test_results_key_includes_hparams_caps_data_and_checkpoint(tmp_path):
    glue = write_glue_fixture(tmp_path / "glue", n_train=8, n_dev=6, tasks=["rte"])
    run = fake_run(tmp_path / "base", steps=(), final_step=5)
    results = tmp_path / "results.jsonl"
    base = ["--runs", str(run), "--tasks", "rte", "--glue_dir", str(glue), "--results", str(results), *FAST]
    assert len(sweep.main([*base, "--max_train_samples", "4"])) == 1
    assert sweep.main([*base, "--max_train_samples", "4"]) == []  # same configuration: reused
    assert len(sweep.main([*base, "--max_train_samples", "4", "--learning_rate", "1e-4"])) == 1  # another lr
    assert len(sweep.main(base)) == 1  # without the training-rows cap
    glue2 = write_glue_fixture(tmp_path / "glue2", n_train=8, n_dev=6, tasks=["rte"])
    assert len(sweep.main([*base[:4], "--glue_dir", str(glue2), *base[6:]])) == 1  # another data source
    st = os.stat(run / "model.safetensors")
    os.utime(run / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # new weights, same path
    assert len(sweep.main(base)) == 1
    rows = lines(results)
    assert len(rows) == 5 and len({r["config_hash"] for r in rows}) == 5
    assert rows[1]["config"]["hparams"]["learning_rate"] == 1e-4 and rows[0]["config"]["caps"]["max_train_samples"] == 4


def test_duplicate_run_names_refused(tmp_path):
    glue = write_glue_fixture(tmp_path / "glue", n_train=8, n_dev=6, tasks=["rte"])
    a, b = fake_run(tmp_path / "a" / "kd", steps=()), fake_run(tmp_path / "b" / "kd", steps=())
    results = tmp_path / "results.jsonl"
    common = ["--tasks", "rte", "--glue_dir", str(glue), "--results", str(results), *FAST]
    with pytest.raises(ValueError, match="two --runs are both named 'kd'"):
        sweep.main(["--runs", str(a), str(b), *common])
    sweep.main(["--runs", str(a), *common])
    with pytest.raises(ValueError, match=r"run name 'kd' .* already holds lines of .*a/kd.*--run_names"):
        sweep.main(["--runs", str(b), *common])
    assert len(sweep.main(["--runs", str(b), "--run_names", "kd_b", *common])) == 1
    assert {r["run"] for r in lines(results)} == {"kd", "kd_b"}


# -- the lr grid and the warmup -----------------------------------------------------------------------
def grid_lines(path):
    """kd/final on rte: 3e-5 best on mean (seeds 0.70, 0.60); 2e-5 (0.80, 0.40) has the best seed, 5e-5 the
    best single score but diverged on seed 1."""
    rows = []
    for lr, accs in ((2e-5, (0.80, 0.40)), (3e-5, (0.70, 0.60)), (5e-5, (0.90, None))):
        for seed, acc in enumerate(accs):
            rows.append({"run": "kd", "checkpoint": "final", "step": 5, "gpu_hours": 1.0, "task": "rte",
                         "seed": seed, "metrics": {"accuracy": acc}, "hparams": {"learning_rate": lr},
                         "lr_grid": [2e-5, 3e-5, 5e-5], "diverged": acc is None})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lr_grid_best_on_dev_selection_and_protocol_in_report(tmp_path):
    out = report.main([str(grid_lines(tmp_path / "r.jsonl")), "--baseline", "kd", "--output_dir", str(tmp_path / "o")])
    (row,) = out["rows"]
    assert row["mean"] == pytest.approx(65.0) and row["n"] == 2  # the 3e-5 lines: mean 65 beats 60
    assert out["protocol"].startswith("best-on-dev learning rate of 2e-05, 3e-05, 5e-05")
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Fine-tuning protocol: best-on-dev learning rate" in md and "kd/final/rte: 3e-05" in md


def test_lr_grid_run_glue(tmp_path, capsys):
    glue, ckpt = write_glue_fixture(tmp_path / "glue", tasks=["rte"]), tiny_checkpoint(tmp_path / "ck")
    out = tmp_path / "out"
    summary = run_glue.main(["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "rte",
                             "--seeds", "0", "1", "--learning_rates", "1e-4", "3e-4", "--output_dir", str(out), *FAST])
    rows = lines(out / "results.jsonl")
    assert sorted((r["hparams"]["learning_rate"], r["seed"]) for r in rows) == [(1e-4, 0), (1e-4, 1), (3e-4, 0),
                                                                                (3e-4, 1)]
    assert all(r["lr_grid"] == [1e-4, 3e-4] for r in rows)
    assert summary["protocol"].startswith("best-on-dev learning rate of 0.0001, 0.0003")
    assert summary["selected_learning_rates"]["rte"] in (1e-4, 3e-4)
    assert "best-on-dev" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--learning_rate and --learning_rates"):
        run_glue.main(["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "rte",
                       "--learning_rate", "1e-4", "--learning_rates", "1e-4", "3e-4", "--output_dir", str(out)])


def test_warmup_ratio_checked_and_the_schedule_applied(tmp_path, monkeypatch):
    import glue_eval.finetune as finetune_mod

    glue, ckpt = write_glue_fixture(tmp_path / "glue", tasks=["rte"]), tiny_checkpoint(tmp_path / "ck")
    base = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", "rte", "--use_cpu",
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--logging_steps", "1", "--learning_rate",
            "1e-3"]
    with pytest.raises(ValueError, match=r"--warmup_ratio 1.0 is invalid; expected a fraction .* in \[0, 1\)"):
        run_glue.main([*base, "--warmup_ratio", "1.0", "--output_dir", str(tmp_path / "o0")])
    with pytest.raises(ValueError, match="--warmup_ratio and --warmup_steps"):
        run_glue.main([*base, "--warmup_ratio", "0.5", "--warmup_steps", "2", "--output_dir", str(tmp_path / "o0")])
    seen = []

    class Recording(finetune_mod.Trainer):
        def train(self, *a, **k):
            out = super().train(*a, **k)
            seen.append([e["learning_rate"] for e in self.state.log_history if "learning_rate" in e])
            return out

    monkeypatch.setattr(finetune_mod, "Trainer", Recording)
    run_glue.main([*base, "--warmup_ratio", "0.5", "--output_dir", str(tmp_path / "o1")])
    run_glue.main([*base, "--warmup_steps", "3", "--output_dir", str(tmp_path / "o2")])
    # linear warmup over w of 4 steps, then linear decay; optimizer step k (logged at k) uses lr(k - 1)
    assert seen[0] == pytest.approx([1e-3 * x for x in (0.0, 0.5, 1.0, 0.5)])  # ratio 0.5 -> 2 warmup steps
    assert seen[1] == pytest.approx([1e-3 * x for x in (0.0, 1 / 3, 2 / 3, 1.0)])  # 3 warmup steps


# -- two GLUE scores -------------------------------------------------------------------------------
def published(mnli, qqp, qnli, sst2, cola, stsb, mrpc, rte, wnli):
    """BERT paper Table 1 / GLUE leaderboard per-task test numbers (points) as our metric dicts (fractions)."""
    f = 0.01
    return {"mnli": {"accuracy_matched": mnli[0] * f, "accuracy_mismatched": mnli[1] * f},
            "qqp": {"f1": qqp[0] * f, "accuracy": qqp[1] * f}, "qnli": {"accuracy": qnli * f},
            "sst2": {"accuracy": sst2 * f}, "cola": {"matthews_correlation": cola * f},
            "stsb": {"pearson": stsb[0] * f, "spearmanr": stsb[1] * f}, "mrpc": {"f1": mrpc[0] * f, "accuracy": mrpc[1] * f},
            "rte": {"accuracy": rte * f}, "wnli": {"accuracy": wnli * f}}


BERT_BASE = published((84.6, 83.4), (71.2, 89.2), 90.5, 93.5, 52.1, (87.1, 85.8), (88.9, 84.8), 66.4, 65.1)
BERT_LARGE = published((86.7, 85.9), (72.1, 89.3), 92.7, 94.9, 60.5, (87.6, 86.5), (89.3, 85.4), 70.1, 65.1)


def test_two_glue_scores_reproduce_bert_base_and_large():
    assert round(metrics.glue_average(BERT_BASE).value, 1) == 79.6 and round(metrics.glue_average(BERT_LARGE).value, 1) == 82.1
    base, large = metrics.glue_leaderboard_score(BERT_BASE), metrics.glue_leaderboard_score(BERT_LARGE)
    assert round(base.value, 1) == 78.3 and round(large.value, 1) == 80.5
    assert base.complete and "WNLI included" in base.label and "leaderboard" in base.label
    assert "Table 1" in metrics.glue_average(BERT_BASE).label
    sub = metrics.glue_leaderboard_score({k: BERT_BASE[k] for k in ("mrpc", "wnli")})
    assert sub.value == pytest.approx((86.85 + 65.1) / 2) and "2/9 tasks" in sub.label


def test_both_scores_named_in_summary_and_report(tmp_path):
    rows = [{"run": "base", "checkpoint": f"checkpoint-{s}", "step": s, "gpu_hours": float(s), "task": t, "seed": 0,
             "metrics": m} for s in (1, 2) for t, m in BERT_BASE.items()]
    summary = run_glue.summarize(rows[:9])
    assert round(summary["glue_average"]["mean"], 1) == 79.6 and round(summary["glue_score"]["mean"], 1) == 78.3
    assert "leaderboard" in summary["glue_score"]["what"] and "Table 1" in summary["glue_average"]["what"]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = report.main([str(res), "--baseline", "base", "--metric", "glue_score", "--output_dir", str(tmp_path / "o")])
    assert round(out["rows"][0]["mean"], 1) == 78.3 and "leaderboard" in out["ylabel"]
    assert "leaderboard" in (tmp_path / "o" / "report.md").read_text()


# -- the report --------------------------------------------------------------------------------------
def curve_lines(path, runs, seeds=(0, 1, 2), task="rte"):
    rows = []
    for run, (costs, per_seed) in runs.items():
        for i, c in enumerate(costs):
            for seed in seeds:
                rows.append({"run": run, "checkpoint": f"checkpoint-{i + 1}", "step": i + 1, "gpu_hours": c,
                             "task": task, "seed": seed, "metrics": {"accuracy": per_seed(i, seed)}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("seeds,says", [((0,), "one seed per point: no spread shown"),
                                         ((0, 1, 2), "mean ± std over 3 seeds")])
def test_plot_title_claims_a_spread_only_with_several_seeds(tmp_path, monkeypatch, seeds, says):
    import matplotlib.axes

    titles = []
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, s, *a, **k: titles.append(s) or real_title(self, s, *a, **k))
    res = curve_lines(tmp_path / "r.jsonl", {"base": ([1, 2], lambda i, s: 0.5 + 0.1 * i + 0.01 * s),
                                            "kd": ([1.2, 2.4], lambda i, s: 0.6 + 0.1 * i + 0.02 * s)}, seeds=seeds)
    report.main([str(res), "--baseline", "base", "--output_dir", str(tmp_path / "o")])
    assert titles and all(says in t for t in titles), titles
    assert len(seeds) > 1 or not any("std" in t for t in titles)


def test_plot_draws_seed_band_and_names_task_subset(tmp_path, monkeypatch):
    import matplotlib.axes

    bands, ylabels = [], []
    real_fill, real_ylabel = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, y1, y2, **k: bands.append((list(y1), list(y2))) or real_fill(self, x, y1, y2, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda self, s, **k: ylabels.append(s) or real_ylabel(self, s, **k))
    res = curve_lines(tmp_path / "r.jsonl", {"base": ([1, 2], lambda i, s: 0.5 + 0.1 * i + 0.01 * s),
                                            "kd": ([1.2, 2.4], lambda i, s: 0.6 + 0.1 * i + 0.02 * s)})
    out = report.main([str(res), "--baseline", "base", "--output_dir", str(tmp_path / "o")])
    assert len(bands) == 2  # one band per run: mean ± std over the seeds
    lo, hi = bands[0]
    assert lo[0] == pytest.approx(51.0 - 1.0) and hi[0] == pytest.approx(51.0 + 1.0)  # base: 50, 51, 52
    assert ylabels and "rte" in ylabels[-1] and "1/8 tasks" in ylabels[-1] and ylabels[-1] == out["ylabel"]
