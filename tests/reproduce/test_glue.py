"""hf-kd reproduce --glue: the runs' final models fine-tuned through glue_eval, a GLUE section with verdicts."""

import json
from pathlib import Path

import pytest

from glue_eval.testing import write_glue_fixture
from hf_kd.cli import main as cli_main
from hf_kd.core.uncertainty import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from hf_kd.reproduce.glue import GlueSettings, drop_stale_lines, glue_section, step_costs_arg
from hf_kd.reproduce.report import write_report
from tests.support.data import write_tiny_corpus

OVERRIDES = ["vocab_size=200", "max_seq_length=32", "batch_size=4", "eval_every=30", "frontier=0.5"]


def _argv(corpus, out, *extra):
    return ["reproduce", "--corpus", corpus, "--override", *OVERRIDES, "--steps", "8", "--seeds", "2",
            "--workers", "1", "--only", "kd_full", "--output_dir", str(out), *extra]


def _glue_flags(glue_dir):
    return ["--glue", str(glue_dir), "--glue_tasks", "sst2", "--glue_max_train_samples", "16", "--glue_max_steps", "2",
            "--glue_seeds", "0", "1", "--glue_learning_rate", "1e-3"]


@pytest.mark.slow
def test_glue_end_to_end_adds_a_section_and_a_rerun_reuses_every_fine_tune(tmp_path, monkeypatch, capsys):
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    glue_dir = write_glue_fixture(tmp_path / "glue", n_train=16, n_dev=8, tasks=["sst2"])
    out = tmp_path / "out"
    assert cli_main(_argv(corpus, out)) == 0  # first without --glue: the runs keep no weights
    assert not (out / "runs" / "kd_full-seed0" / "model.safetensors").exists()

    assert cli_main(_argv(corpus, out, *_glue_flags(glue_dir))) == 0
    for name in ("baseline", "baseline_0.5x", "kd_full"):  # retrained to keep their final model
        run = out / "runs" / f"{name}-seed1"
        assert (run / "model.safetensors").is_file()
        saved = json.loads((run / "all_results.json").read_text())
        assert saved["num_teachers"] == (1 if name == "kd_full" else 0) and saved["gpu_hours"] > 0
    res = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in res["glue"]["seeds"]] == [0, 1]
    names = {r["variant"] for r in res["runs"]}
    assert {"baseline", "baseline_0.5x", "kd_full"} <= names
    for seed in (0, 1):  # one sweep per pretraining seed: every run x 2 fine-tuning seeds of sst2
        (results,) = (out / "glue").glob(f"sst2-*/seed{seed}/results.jsonl")  # a folder per GLUE configuration
        lines = results.read_text().splitlines()
        assert len(lines) == 2 * len(names) and {json.loads(x)["task"] for x in lines} == {"sst2"}
        assert {json.loads(x)["run"] for x in lines} == names
        assert {json.loads(x)["hparams"]["learning_rate"] for x in lines} == {1e-3}  # --glue_learning_rate
    assert set(res["glue_summary"]) == names
    assert res["glue_summary"]["kd_full"]["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    md = (out / "results.md").read_text()
    assert "## GLUE (fine-tuned final models)" in md and "| kd_full |" in md.split("## GLUE")[1]
    assert "MLM-loss and GLUE verdicts" in md and "## GLUE" in capsys.readouterr().out

    files = sorted((out / "glue").glob("*/seed*/results.jsonl"))
    before = [f.read_bytes() for f in files]
    weights = (out / "runs" / "kd_full-seed0" / "model.safetensors").stat().st_mtime_ns
    assert cli_main(_argv(corpus, out, *_glue_flags(glue_dir))) == 0
    # nothing retrained (same weights) and no new fine-tune (the results files are byte-identical)
    assert (out / "runs" / "kd_full-seed0" / "model.safetensors").stat().st_mtime_ns == weights
    assert [f.read_bytes() for f in files] == before and len(files) == 2
    assert (out / "results.md").read_text() == md

    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(out)]) == 0


def _no_training(monkeypatch):
    """A refusal that slipped through fails at once instead of training (and the test says so)."""
    from hf_kd.reproduce import run, study

    def trained(*a, **k):
        raise AssertionError("training started: the refusal came too late")

    monkeypatch.setattr(run, "run_protocol", trained)
    monkeypatch.setattr(study, "run_study", trained)


def _refused(argv, capsys, *needles):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(n in err[0] for n in needles), err


@pytest.mark.parametrize("extra, needles", [
    (["--task", "clm"], ["--glue with --task clm", "expected --task mlm"]),
    (["--task", "vision"], ["--glue with --task vision"]),
    (["--study"], ["--glue with --study"]),
    (["--glue_max_steps", "0"], ["--glue_max_steps 0", "positive"]),
    (["--glue_learning_rate", "-1"], ["--glue_learning_rate -1.0", "positive"]),
])
def test_glue_refuses_other_tasks_and_bad_values_before_any_work(tmp_path, capsys, monkeypatch, extra, needles):
    _no_training(monkeypatch)
    glue_dir = write_glue_fixture(tmp_path / "glue", n_train=4, n_dev=4, tasks=["sst2"])
    out = tmp_path / "out"
    _refused(["reproduce", "--glue", str(glue_dir), "--output_dir", str(out), *extra], capsys, *needles)
    assert not out.exists()


def test_glue_refuses_a_folder_without_the_tasks_files_before_training(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    glue_dir = write_glue_fixture(tmp_path / "glue", n_train=4, n_dev=4, tasks=["sst2"])
    out = tmp_path / "out"
    _refused(_argv(corpus, out, "--glue", str(tmp_path / "nowhere")), capsys, "nowhere", "is not a folder",
             "expected the GLUE download layout")
    _refused(_argv(corpus, out, "--glue", str(glue_dir), "--glue_tasks", "rte"), capsys, "has no rte train split",
             "RTE/train.tsv")
    _refused(_argv(corpus, out, "--glue", str(glue_dir), "--glue_tasks", "sst9"), capsys, "sst9")
    assert not out.exists()


def _seed(seed, speedups, bounds=None, scores=(80.0, 70.0, 82.0)):
    """One pretraining seed's numbers as run_glue reads them from glue_eval's report.json."""
    names = ("baseline", "baseline_0.5x", "kd_full")
    return {"seed": seed, "metric": "GLUE average (BERT Table 1) over 1/8 tasks (sst2)", "cost_axis": "calibrated",
            "scores": {n: {"score": s, "std": 1.0, "n": 3, "cost": c} for n, s, c in zip(names, scores, (8, 4, 10))},
            "frontier": {"kd_full": {"values": list(speedups), "bounds": bounds or ["="] * len(speedups),
                                     "verdict": INCONCLUSIVE, "no_signal": ""}},
            "report": f"glue/sst2-0123abcd/seed{seed}/report/report.md", "fine_tuning_seeds": ""}


def _glue(seeds):
    return {"settings": {"glue_dir": "/data/glue", "tasks": "sst2", "seeds": [0, 1, 2], "max_train_samples": 2000,
                         "epochs": 1.0, "max_steps": None, "use_cpu": True}, "seeds": seeds}


def test_glue_verdict_is_the_one_rule_over_pretraining_seeds_of_the_fine_tune_geometric_means():
    # per pretraining seed: geometric mean of its fine-tuning seeds (1.2*1.3*1.25 ... ) all clearly above 1
    glue = _glue([_seed(0, [1.2, 1.3, 1.25]), _seed(1, [1.3, 1.4, 1.35]), _seed(2, [1.25, 1.2, 1.3])])
    summary, md = glue_section(glue, {"kd_full": REPRODUCED})
    kd = summary["kd_full"]
    assert kd["verdict"] == REPRODUCED
    assert kd["frontier"]["values"][0] == pytest.approx((1.2 * 1.3 * 1.25) ** (1 / 3))
    assert kd["score"]["mean"] == pytest.approx(82.0) and summary["baseline"]["verdict"] == ""
    assert "MLM-loss and GLUE verdicts agree: kd_full (MLM loss REPRODUCED, GLUE REPRODUCED)" in md

    # one pretraining seed below 1: the interval straddles 1 -> inconclusive, and the verdicts disagree
    glue = _glue([_seed(0, [1.2, 1.3, 1.25]), _seed(1, [0.8, 0.85, 0.9]), _seed(2, [1.25, 1.2, 1.3])])
    summary, md = glue_section(glue, {"kd_full": REPRODUCED})
    assert summary["kd_full"]["verdict"] == INCONCLUSIVE
    assert "MLM-loss and GLUE verdicts agree for none: kd_full (MLM loss REPRODUCED, GLUE inconclusive)" in md


def test_glue_seed_with_lower_and_upper_bounds_has_no_value():
    # a fine-tuning seed beyond the frontier's top (>=) and one below its bottom (<=): no single bound direction
    glue = _glue([_seed(0, [1.2, 0.9], [">=", "<="]), _seed(1, [1.3, 1.3], [">=", "="])])
    summary, _ = glue_section(glue, {})
    kd = summary["kd_full"]
    assert kd["frontier"]["missing"] == 1 and kd["frontier"]["bounds"] == [">="]
    assert kd["verdict"] == INCONCLUSIVE


def _mlm_run(variant, losses, seed, role="student", teachers=()):
    log = [{"eval_loss": v, "eval_accuracy": 1 / v, "gpu_hours": i * 0.01, "step": i * 10}
           for i, v in enumerate(losses, start=1)]
    return {"variant": variant, "role": role, "seed": seed, "steps": 10 * len(losses), "teacher_forwards": 0,
            "teachers": list(teachers), "kd_stop_ratio": None, "selection": "mean", "run_dir": f"gone/{variant}",
            "log_history": log}


def test_glue_section_rerenders_from_results_json_and_the_check_catches_an_edit(tmp_path, capsys):
    runs = []
    for s in range(3):
        runs += [_mlm_run("baseline", [6.0, 5.5, 5.0], s), _mlm_run("baseline_0.5x", [6.0, 5.6], s, "frontier"),
                 _mlm_run("kd_full", [5.6, 5.1, 4.8 + s / 50], s, teachers=("good",))]
    results = {"task": "mlm", "corpus": "synthetic", "teachers": {}, "runs": runs,
               "glue": _glue([_seed(0, [1.2, 1.3]), _seed(1, [1.3, 1.4]), _seed(2, [1.25, 1.2])])}
    write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## GLUE" in md and "`glue/sst2-0123abcd/seed2/report/report.md`" in md
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 0
    row = next(line for line in md.splitlines() if line.startswith("| kd_full | 82.00"))
    (tmp_path / "results.md").write_text(md.replace(row, row.replace("82.00", "84.00")))
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 2
    assert "does not follow from its run logs" in capsys.readouterr().err
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["glue_summary"]["kd_full"]["verdict"] == REPRODUCED
    assert cli_main(["reproduce", "--rerender", "--output_dir", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == md  # the GLUE section rebuilt from results.json alone
    assert Path(tmp_path / "results.json").is_file()


def test_fine_tunes_of_retrained_weights_are_dropped_and_each_configuration_has_its_own_folder(tmp_path):
    run = tmp_path / "runs" / "kd_full-seed0"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"new weights")
    st = (run / "model.safetensors").stat()
    line = {"run": "kd_full", "run_path": str(run), "task": "sst2", "seed": 0}
    current = {**line, "config": {"model": {"path": str(run), "weights": {"model.safetensors": [st.st_size,
                                                                                                 st.st_mtime_ns]}}}}
    stale = {**line, "seed": 1, "config": {"model": {"path": str(run), "weights": {"model.safetensors": [3, 1]}}}}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(stale) + "\n" + json.dumps(current) + "\n")
    drop_stale_lines(results)
    assert [json.loads(x)["seed"] for x in results.read_text().splitlines()] == [0]

    a = GlueSettings("/data/glue", "sst2,rte", max_steps=2)
    assert a.folder_name() == GlueSettings("/data/glue", "sst2,rte", max_steps=2).folder_name()
    assert a.folder_name() != GlueSettings("/data/glue", "sst2,rte", max_steps=3).folder_name()
    assert a.folder_name().startswith("sst2+rte-")


def test_step_costs_for_the_glue_report_keep_the_kinds_glue_eval_charges(tmp_path):
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"relative": {"base": 1.0, "kd1": 1.25, "kd3": 2.5, "cached": 0.98, "produce1": 0.93}}))
    assert step_costs_arg(cal) == "base=1.0,kd1=1.25,kd3=2.5"
    cal.write_text(json.dumps({"relative": {"cached": 0.98}}))
    assert step_costs_arg(cal) is None  # no baseline step to scale by: the report's GPU-hours axis instead



def test_glue_speedups_of_cached_runs_are_charged_the_amortised_cost_of_the_mlm_verdicts():
    from dataclasses import replace as _replace

    from hf_kd.reproduce.glue import FineTuneSpeedups, RunScore, SeedGlue, amortised
    from hf_kd.reproduce.protocol import Calibration
    from tests.support.reproduce import synthetic_run

    cal = Calibration(relative={"base": 1.0, "kd1": 1.5, "post": 1.0, "cached": 1.0, "produce1": 0.5})
    kd = _replace(synthetic_run("kd_full", [5.0] * 10, teachers=("good",)), teacher_outputs="cached", cache="c")
    live = synthetic_run("kd_full_live", [5.0] * 10, teachers=("good",))
    # glue_eval charged the cached run 180 (it knows live teacher steps only); amortised it costs 100 + 0.5 x 100
    glue = SeedGlue(0, "stsb", "calibrated", {"kd_full": RunScore(20.0, 1.0, 3, 180.0),
                                               "kd_full_live": RunScore(21.0, 1.0, 3, 150.0)},
                    {"kd_full": FineTuneSpeedups([1.2, None, 0.9], ["=", "=", "="], "inconclusive"),
                     "kd_full_live": FineTuneSpeedups([1.1, 1.0, 1.2], ["=", "=", "="], "inconclusive")}, "r.md")
    out = amortised(glue, [kd, live], cal)
    assert out.scores["kd_full"].cost == pytest.approx(150.0)
    got = out.frontier["kd_full"].values
    assert got[1] is None and got[0] == pytest.approx(1.2 * 1.2) and got[2] == pytest.approx(0.9 * 1.2)
    assert out.frontier["kd_full_live"].values == [1.1, 1.0, 1.2]  # a live run: charged as glue_eval charges it
    assert out.scores["kd_full_live"].cost == 150.0
