"""``glue_eval.report`` on synthetic curves: speed-ups reached / not reached / interpolated / lower-is-better."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from glue_eval import report

COST = [1.0, 2.0, 3.0, 4.0]
BASE = [0.50, 0.55, 0.60, 0.64]  # target: final quality 0.64 at cost 4
RUNS = {
    "baseline": BASE,
    "kd": [0.56, 0.62, 0.66, 0.68],  # crosses 0.64 between cost 2 and 3 at 2.5 -> 4 / 2.5 = 1.6x
    "kd_first": [0.70, 0.71, 0.72, 0.73],  # at or beyond from the first point -> 4 / 1
    "kd_dip": [0.65, 0.60, 0.66, 0.67],  # beyond at cost 1 but dips: sustained from 2 + 0.04/0.06 -> 1.5x
    "kd_slow": [0.40, 0.45, 0.50, 0.55],  # never -> not reached
}
SEED_SHIFT = {0: -0.01, 1: 0.0, 2: 0.01}  # added to the KD runs only: per-seed crossings differ


def write_results(path, runs=RUNS, loss=False):
    with open(path, "w") as f:
        for run, qs in runs.items():
            for i, (c, q) in enumerate(zip(COST, qs)):
                for seed, d in SEED_SHIFT.items():
                    v = q + (0.0 if run == "baseline" else d)
                    metrics = {"accuracy": v, "eval_loss": 10 * (1 - v)}
                    f.write(json.dumps({"run": run, "checkpoint": f"checkpoint-{i + 1}", "step": i + 1,
                                        "gpu_hours": c, "task": "rte", "seed": seed, "metrics": metrics}) + "\n")
    return path


def per_seed_kd():
    """Hand-computed: seed s crosses 0.64 between (2, 0.62+d) and (3, 0.66+d)."""
    return [4 / (2 + (0.64 - (0.62 + d)) / 0.04) for d in SEED_SHIFT.values()]


def test_paper_speedups_through_report(tmp_path, capsys):
    res = write_results(tmp_path / "results.jsonl")
    out = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "rep")])
    s = {r["run"]: r for r in out["speedups"]}
    assert set(s) == {"kd", "kd_first", "kd_dip", "kd_slow"}
    assert s["kd"]["crossing_cost"] == pytest.approx(2.5)  # the seed-mean curve: a cost, not a speed-up
    want = per_seed_kd()
    assert s["kd"]["paper"]["per_seed"] == pytest.approx(want)
    geo = statistics.geometric_mean(want)
    assert s["kd"]["paper"]["summary"]["mean"] == pytest.approx(geo) and s["kd"]["paper"]["verdict"] == "REPRODUCED"
    # reached at the first checkpoint: only a lower bound on the speed-up
    assert s["kd_first"]["paper"]["per_seed"] == pytest.approx([4.0] * 3)
    assert s["kd_first"]["paper"]["bounds"] == [">="] * 3
    assert s["kd_dip"]["paper"]["per_seed"][1] == pytest.approx(1.5)  # seed 1: no shift, sustained from 2 + 2/3
    assert s["kd_slow"]["paper"]["per_seed"] == [None] * 3 and s["kd_slow"]["paper"]["verdict"] == "inconclusive"
    assert s["kd_slow"]["paper"]["text"] == "not reached on 3 of 3 seeds"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| kd | 2.5 | {', '.join(f'{x:.2f}x' for x in want)} | {geo:.2f}x" in md and "**REPRODUCED**" in md
    assert "| kd_slow | not reached | not reached, not reached, not reached |" in md
    assert "GLUE average (BERT Table 1) over 1/8 tasks present (rte;" in md and md in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "rep" / "table.csv")))
    assert len(rows) == 5 * 4
    base_final = next(r for r in rows if r["run"] == "baseline" and r["checkpoint"] == "checkpoint-4")
    assert float(base_final["mean"]) == pytest.approx(64.0) and base_final["n"] == "3"  # GLUE points = x100
    kd_first = next(r for r in rows if r["run"] == "kd" and r["checkpoint"] == "checkpoint-1")
    assert float(kd_first["std"]) == pytest.approx(1.0)  # seeds 55, 56, 57
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 10_000
    assert len(list(csv.DictReader(open(tmp_path / "rep" / "speedups.csv")))) == 4


def test_lower_is_better_metric(tmp_path):
    res = write_results(tmp_path / "results.jsonl")
    out = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "rep"),
                       "--metric", "eval_loss", "--lower_is_better"])
    s = {r["run"]: r for r in out["speedups"]}
    # loss = 10 (1 - accuracy): the same crossings as for accuracy
    assert s["kd"]["crossing_cost"] == pytest.approx(2.5)
    assert s["kd_slow"]["paper"]["per_seed"] == [None] * 3
    assert s["kd"]["paper"]["per_seed"] == pytest.approx(per_seed_kd())
    assert out["rows"][0]["mean"] == pytest.approx(5.0)  # baseline, cost 1: loss 10 * 0.5
    higher = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "wrong"),
                          "--metric", "eval_loss"])  # treated as higher-is-better the slow run "wins" at once
    assert {r["run"]: r for r in higher["speedups"]}["kd_slow"]["paper"]["per_seed"] == pytest.approx([4.0] * 3)


def test_budget_frontier(tmp_path):
    runs = {"baseline": BASE, "kd": RUNS["kd"], "kd_mid": [0.50, 0.60, 0.60, 0.60]}
    res = write_results(tmp_path / "results.jsonl", runs)
    with open(res, "a") as f:  # a short baseline: full schedule ending at cost 2 with 0.55
        for seed in SEED_SHIFT:
            f.write(json.dumps({"run": "base_short", "checkpoint": "final", "step": 2, "gpu_hours": 2.0,
                                "task": "rte", "seed": seed, "metrics": {"accuracy": 0.55}}) + "\n")
    out = report.main([str(res), "--baseline", "baseline", "--frontier", "base_short", "baseline",
                       "--output_dir", str(tmp_path / "rep")])
    s = {r["run"]: r for r in out["speedups"]}
    assert set(s) == {"kd", "kd_mid"}
    # kd_mid per seed at cost 4: frontier cost 2 * (4 / 2) ** ((final - 55) / (64 - 55)), log-cost interpolation
    mid_final = 100 * statistics.mean(0.60 + d for d in SEED_SHIFT.values())
    per_seed = [2 * 2 ** ((100 * (0.60 + d) - 55) / 9) / 4 for d in SEED_SHIFT.values()]
    assert s["kd_mid"]["frontier"]["per_seed"] == pytest.approx(per_seed)
    assert statistics.mean(100 * (0.60 + d) for d in SEED_SHIFT.values()) == pytest.approx(mid_final)
    # beyond the best frontier point: the best point's cost / the run's cost is a lower bound
    assert s["kd"]["frontier"]["bounds"] == [">="] * 3 and s["kd"]["frontier"]["per_seed"] == pytest.approx([1.0] * 3)
    assert "budget frontier" in (tmp_path / "rep" / "report.md").read_text()


def test_from_runs_trainer_state(tmp_path):
    def run(name, losses):
        d = tmp_path / name
        d.mkdir()
        log = []
        for i, loss in enumerate(losses, start=1):
            log += [{"step": 10 * i, "loss": loss + 1, "gpu_hours": 0.5 * i}, {"step": 10 * i, "eval_loss": loss}]
        log.append({"step": 10 * len(losses), "eval_loss": losses[-1]})  # the final evaluate() after training
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 10 * len(losses), "log_history": log}))
        return str(d)

    base, kd = run("base", [5.0, 4.0, 3.0, 2.0]), run("kd", [4.0, 3.0, 1.5, 1.4])
    argv = ["--from_runs", base, kd, "--metric", "eval_loss", "--lower_is_better", "--baseline", "base"]
    out = report.main([*argv, "--output_dir", str(tmp_path / "rep")])
    (s,) = out["speedups"]
    assert s["run"] == "kd" and s["crossing_cost"] == pytest.approx(1.0 + 0.5 * (1 / 1.5))  # 3.0 -> 1.5 crosses 2.0
    assert s["paper"]["per_seed"] == pytest.approx([2.0 / (1.0 + 1 / 3)])
    assert s["paper"]["verdict"] == "inconclusive" and s["paper"]["reason"] == "1 seed"  # one run: no seeds
    assert [(r["checkpoint"], r["step"]) for r in out["rows"] if r["run"] == "kd"] == [
        ("step-10", 10), ("step-20", 20), ("step-30", 30), ("step-40", 40)]
    by_step = report.main([*argv, "--cost", "step", "--output_dir", str(tmp_path / "rep2")])
    assert by_step["speedups"][0]["paper"]["per_seed"] == pytest.approx([40 / (20 + 10 / 1.5)])


def test_bad_report_input_writes_nothing(tmp_path):
    res = write_results(tmp_path / "results.jsonl")
    out = tmp_path / "rep"
    with pytest.raises(ValueError, match="run 'nobody' .* has no data; expected one of"):
        report.main([str(res), "--baseline", "nobody", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--metric 'f1'"):
        report.main([str(res), "--baseline", "baseline", "--metric", "f1", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="not neither"):
        report.main(["--baseline", "baseline", "--output_dir", str(out)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.main([str(tmp_path / "missing.jsonl"), "--baseline", "b", "--output_dir", str(out)])
    assert not out.exists()
