"""``glue_eval.report`` prints speed-ups only with their verdict, flags majority-class scores, and can charge
steps by a calibrated cost instead of wall-clock GPU-hours."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from glue_eval import report
from glue_eval.levels import dev_levels
from tests.support import DATA_DIR

MRPC_LEVELS = {"majority": {"accuracy": 0.6838, "f1": 0.8122}, "chance": {"accuracy": 0.5, "f1": 0.5938}}


def lines(path, runs, seeds=(0,), task="mrpc", levels=MRPC_LEVELS, run_paths=None):
    """Results lines: ``runs[name] = (gpu_hours per checkpoint, quality(i, seed) as the task's metrics)``."""
    rows = []
    for run, (hours, quality) in runs.items():
        for i, h in enumerate(hours):
            for seed in seeds:
                row = {"run": run, "checkpoint": f"checkpoint-{i + 1}", "step": i + 1, "gpu_hours": h,
                       "task": task, "seed": seed, "metrics": quality(i, seed),
                       "run_path": (run_paths or {}).get(run)}
                if levels is not None:
                    row["levels"] = levels
                rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def speedup_section(md: str) -> str:
    return md.split("## Speed-up over the baseline")[1]


def test_one_seed_at_majority_level_prints_no_bare_speedup(tmp_path, capsys):
    """The walk-through's case: one seed, MRPC F1 at the majority class at every checkpoint, KD cheaper in
    wall-clock: the report says why there is nothing to read, never "kd 2.64x"."""
    at_majority = lambda i, s: {"f1": 0.8125, "accuracy": 0.6838}  # noqa: E731
    res = lines(tmp_path / "r.jsonl", {"baseline": ([0.01, 0.025], at_majority), "kd": ([0.0029, 0.0058], at_majority)})
    out = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "o")])
    md = capsys.readouterr().out
    (s,) = out["speedups"]
    assert s["no_signal"] == "at majority-class level: no signal in this task"
    assert s["paper"]["per_seed"] == [] and s["paper"]["verdict"] == "inconclusive"
    assert out["levels"]["no_signal_tasks"] == ["mrpc"]
    assert "at majority-class level: no signal in this task" in md and "**inconclusive**" in md
    assert not re.search(r"\d\.\d\dx", speedup_section(md))  # no speed-up number at all
    assert "| kd | checkpoint-2 | 2 | 0.0058 | 81.2500 | 0.0000 | 1 |  | mrpc |" in md  # the score is marked
    assert "machine load can bend it" in md  # no calibration: the wall-clock axis says what it is


def test_one_seed_above_the_level_is_inconclusive_with_its_value(tmp_path):
    base = lambda i, s: {"f1": 0.84 + 0.02 * i, "accuracy": 0.75}  # noqa: E731
    kd = lambda i, s: {"f1": 0.86 + 0.02 * i, "accuracy": 0.76}  # noqa: E731
    res = lines(tmp_path / "r.jsonl", {"baseline": ([1.0, 2.0, 3.0], base), "kd": ([1.0, 2.0, 3.0], kd)})
    out = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "o")])
    (s,) = out["speedups"]
    assert s["paper"]["per_seed"] == pytest.approx([1.5]) and s["no_signal"] == ""
    assert (s["paper"]["verdict"], s["paper"]["reason"]) == ("inconclusive", "1 seed")
    row = next(x for x in speedup_section((tmp_path / "o" / "report.md").read_text()).splitlines()
               if x.startswith("| kd |"))
    assert "1.50x" in row and "**inconclusive** (1 seed)" in row
    assert "with one seed every verdict is inconclusive" in (tmp_path / "o" / "report.md").read_text()


def test_several_seeds_with_a_clear_gain_reproduced(tmp_path):
    base = lambda i, s: {"f1": 0.84 + 0.02 * i + 0.002 * s, "accuracy": 0.75}  # noqa: E731
    kd = lambda i, s: {"f1": 0.86 + 0.02 * i + 0.002 * s, "accuracy": 0.76}  # noqa: E731
    res = lines(tmp_path / "r.jsonl", {"baseline": ([1.0, 2.0, 3.0], base), "kd": ([1.0, 2.0, 3.0], kd)},
                seeds=(0, 1, 2))
    out = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "o")])
    (s,) = out["speedups"]
    assert s["paper"]["per_seed"] == pytest.approx([1.5] * 3)
    assert s["paper"]["verdict"] == "REPRODUCED" and s["paper"]["summary"]["ci90"][0] > 1.0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "fine-tuning seeds 0, 1, 2 of one pretraining run per name" in md and "90% Student-t interval" in md


def test_only_tasks_with_signal_enter_the_quality(tmp_path):
    """MRPC at the majority class everywhere, RTE with a clear gain: the speed-up comes from RTE alone."""
    rte = {"majority": {"accuracy": 0.527}, "chance": {"accuracy": 0.5}}
    base = lambda i, s: {"accuracy": 0.60 + 0.05 * i + 0.001 * s}  # noqa: E731
    kd = lambda i, s: {"accuracy": 0.65 + 0.05 * i + 0.001 * s}  # noqa: E731
    flat = lambda i, s: {"f1": 0.8122, "accuracy": 0.6838}  # noqa: E731
    runs = {"baseline": ([1.0, 2.0, 3.0], base), "kd": ([1.0, 2.0, 3.0], kd)}
    a = lines(tmp_path / "a.jsonl", runs, seeds=(0, 1, 2), task="rte", levels=rte).read_text()
    b = lines(tmp_path / "b.jsonl", {n: (h, flat) for n, (h, _) in runs.items()}, seeds=(0, 1, 2)).read_text()
    (tmp_path / "r.jsonl").write_text(a + b)
    out = report.main([str(tmp_path / "r.jsonl"), "--baseline", "baseline", "--output_dir", str(tmp_path / "o")])
    (s,) = out["speedups"]
    assert out["levels"]["no_signal_tasks"] == ["mrpc"] and s["no_signal"] == ""
    assert s["target"] == pytest.approx(100 * (0.70 + 0.001))  # RTE alone (mean over the seeds)
    assert s["paper"]["per_seed"] == pytest.approx([1.5] * 3) and s["paper"]["verdict"] == "REPRODUCED"
    assert "left out: mrpc" in (tmp_path / "o" / "report.md").read_text()


def run_folder(path, teachers: int, stop: int):
    path.mkdir()
    (path / "all_results.json").write_text(json.dumps({"num_teachers": teachers, "kd_stop_step": stop,
                                                       "teacher_forwards": 8 * teachers}))
    return str(path)


@pytest.mark.parametrize("stop, want", [(4, 4 / 3), (1, 4 / 2.5)])
def test_calibrated_axis_charges_kd_steps(tmp_path, stop, want):
    """KD reaches the baseline's final F1 at step 2 of 4: 2.0x in steps. A KD step charged 1.5 baseline steps
    makes it 4 / (2 x 1.5) with KD throughout, 4 / (1.5 + 1) with KD stopped after step 1."""
    base = lambda i, s: {"f1": 0.84 + 0.02 * i + 0.001 * s, "accuracy": 0.75}  # noqa: E731
    kd = lambda i, s: {"f1": 0.88 + 0.02 * i + 0.001 * s, "accuracy": 0.76}  # noqa: E731
    paths = {"baseline": run_folder(tmp_path / "baseline", 0, 0), "kd": run_folder(tmp_path / "kd", 1, stop)}
    hours = [0.5, 1.0, 1.5, 2.0]  # wall-clock: the KD run looks as cheap per step as the baseline
    res = lines(tmp_path / "r.jsonl", {"baseline": (hours, base), "kd": (hours, kd)}, seeds=(0, 1, 2),
                run_paths=paths)
    argv = [str(res), "--baseline", "baseline"]
    steps = report.main([*argv, "--cost", "step", "--output_dir", str(tmp_path / "s")])
    assert steps["speedups"][0]["paper"]["per_seed"] == pytest.approx([2.0] * 3)
    cal = report.main([*argv, "--step_costs", "base=1.0,kd=1.5", "--output_dir", str(tmp_path / "c")])
    assert cal["cost_axis"] == "calibrated" and cal["speedups"][0]["paper"]["per_seed"] == pytest.approx([want] * 3)
    assert cal["views"]["gpu_hours"][0]["paper"]["per_seed"] == pytest.approx([2.0] * 3)  # the second view
    assert {r["cost"] for r in cal["rows"] if r["run"] == "baseline"} == {1.0, 2.0, 3.0, 4.0}
    md = (tmp_path / "c" / "report.md").read_text()
    assert "machine load cannot bend it" in md and "Second view: pretraining GPU-hours" in md
    (tmp_path / "calibration.json").write_text(json.dumps({"relative": {"base": 2.0, "kd1": 3.0}}))  # scaled
    from_file = report.main([*argv, "--step_costs", str(tmp_path / "calibration.json"),
                             "--output_dir", str(tmp_path / "f")])
    assert from_file["speedups"][0]["paper"]["per_seed"] == pytest.approx([want] * 3)


def test_bad_cost_input_writes_nothing(tmp_path):
    good = lambda i, s: {"f1": 0.9, "accuracy": 0.9}  # noqa: E731
    res = lines(tmp_path / "r.jsonl", {"baseline": ([1.0], good), "kd": ([1.0], good)},
                run_paths={"baseline": str(tmp_path / "nowhere"), "kd": str(tmp_path / "nowhere")})
    out = tmp_path / "o"
    argv = [str(res), "--baseline", "baseline", "--output_dir", str(out)]
    with pytest.raises(ValueError, match="--step_costs 'kd=1.5' is invalid; expected base=COST"):
        report.main([*argv, "--step_costs", "kd=1.5"])
    with pytest.raises(ValueError, match="--cost calibrated needs --step_costs"):
        report.main([*argv, "--cost", "calibrated"])
    with pytest.raises(FileNotFoundError, match="all_results.json' does not exist"):
        report.main([*argv, "--step_costs", "base=1,kd=1.5"])
    assert not out.exists()


def test_dev_levels_of_labels():
    lv = dev_levels("mrpc", {"validation": np.array([1, 1, 1, 0])})
    assert lv["majority"] == {"accuracy": 0.75, "f1": pytest.approx(2 * 0.75 / 1.75)}
    assert lv["chance"] == {"accuracy": 0.5, "f1": pytest.approx(0.75 / 1.25)}
    assert dev_levels("cola", {"validation": np.array([1, 1, 0])})["majority"] == {"matthews_correlation": 0.0}


@pytest.mark.skipif(not (DATA_DIR / "glue" / "MRPC").is_dir(), reason="real GLUE data absent")
def test_mrpc_majority_level_from_the_real_dev_set(tmp_path):
    """Lines written without levels: ``--glue_dir`` computes them; MRPC's majority-class F1 is 0.812."""
    flat = lambda i, s: {"f1": 0.8125, "accuracy": 0.6838}  # noqa: E731
    res = lines(tmp_path / "r.jsonl", {"baseline": ([1.0, 2.0], flat), "kd": ([0.5, 1.0], flat)}, levels=None)
    no_dir = report.main([str(res), "--baseline", "baseline", "--output_dir", str(tmp_path / "a")])
    assert no_dir["levels"]["unknown"] == ["mrpc"]
    out = report.main([str(res), "--baseline", "baseline", "--glue_dir", str(DATA_DIR / "glue"),
                       "--output_dir", str(tmp_path / "o")])
    assert out["levels"]["tasks"]["mrpc"]["majority"] == pytest.approx(81.22, abs=0.01)
    assert out["speedups"][0]["no_signal"] == "at majority-class level: no signal in this task"
