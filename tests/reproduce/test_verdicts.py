"""hf-kd reproduce verdicts: the interval rule, findings drawn only among winners, the baseline's 1.00x, calibration."""

from dataclasses import replace

import pytest

from hf_kd.core.uncertainty import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, paired_ratio, verdict
from hf_kd.reproduce.calibrate import calibrated_cost, kinds_for
from hf_kd.reproduce.findings import findings
from hf_kd.reproduce.protocol import Calibration, Variant
from hf_kd.reproduce.report import TEXT, markdown_table, speedups
from tests.support.reproduce import synthetic_run as _run


def _frontier(seed, shift=0.0):
    """Baselines at 0.5x, 1x, 2x of 40 steps: final losses 5.4, 5.0, 4.6 (+ a per-seed shift)."""
    return [_run("baseline", [6.0 + shift, 5.5 + shift, 5.2 + shift, 5.0 + shift], seed=seed),
            _run("baseline_0.5x", [6.0 + shift, 5.4 + shift], role="frontier", seed=seed),
            _run("baseline_2x", [x + shift for x in (6.0, 5.6, 5.3, 5.1, 4.9, 4.8, 4.7, 4.6)], role="frontier",
                 seed=seed)]


# -- speed-ups and findings on synthetic curves ------------------------------------------------------
def _grid(kd_full_final, kd_stop_final, seeds=3, jitter=0.01):
    runs = []
    for s in range(seeds):
        j = jitter * (s - 1)
        runs += _frontier(s)
        runs.append(_run("kd_full", [5.6, 5.2, 5.0, kd_full_final + j], seed=s, teachers=("good",)))
        runs.append(_run("kd_stop50", [5.6, 5.2, 5.0, kd_stop_final + j], seed=s, teachers=("good",), stop=0.5))
    return runs


def test_kd_wins_and_early_stop_comparison_is_drawn():
    # frontier (20, 5.4) (40, 5.0) (80, 4.6), interpolated in log cost: final 4.8 needs 40 * 2**0.5 = 56.6 steps
    # (1.41x), 4.7 needs 40 * 2**0.75 = 67.3 steps (1.68x)
    t = speedups(_grid(4.8, 4.7))
    assert t["kd_full"].frontier["step"]["mean"] == pytest.approx(2**0.5, rel=1e-3)  # geometric mean of the jittered seeds
    assert t["kd_full"].verdict == REPRODUCED and t["kd_stop50"].verdict == REPRODUCED
    f = {x["finding"].split()[0]: x for x in findings(t, TEXT)}
    assert f["KD"]["verdict"] == REPRODUCED
    assert f["Stopping"]["verdict"] == REPRODUCED, f["Stopping"]["evidence"]


def test_no_variant_beats_the_baseline_so_no_comparison():
    t = speedups(_grid(5.2, 5.1))  # both end worse than the 1x baseline (5.0): speed-ups < 1
    assert t["kd_full"].verdict == NOT_REPRODUCED
    f = {x["finding"].split()[0]: x for x in findings(t, TEXT)}
    assert f["KD"]["verdict"] == NOT_REPRODUCED
    assert f["Stopping"]["verdict"] == "not drawn"
    assert "kd_full is not reproduced against the baseline" in f["Stopping"]["evidence"]


def test_noisy_seeds_are_inconclusive():
    t = speedups(_grid(4.95, 4.95, jitter=0.2))  # per seed 5.15 / 4.95 / 4.75: slower, faster, faster
    assert t["kd_full"].verdict == INCONCLUSIVE
    f = {x["finding"].split()[0]: x for x in findings(t, TEXT)}
    assert f["KD"]["verdict"] == INCONCLUSIVE and f["Stopping"]["verdict"] == "not drawn"


def test_one_seed_is_always_inconclusive():
    t = speedups(_grid(4.7, 4.6, seeds=1))
    assert t["kd_full"].frontier["step"]["mean"] > 1.5
    assert t["kd_full"].verdict == INCONCLUSIVE and t["kd_full"].verdict_reason == "1 seed"


def test_beyond_the_frontier_is_a_lower_bound():
    t = speedups(_grid(4.5, 4.5))  # better than the 2x point (4.6): the speed-up is at least 80/40
    fs = t["kd_full"].frontier["step"]
    assert fs["bounds"] == [">=", ">=", ">="] and fs["values"][0] == pytest.approx(2.0)
    assert "| ≥2.00x ×/÷ 1.00 [2.00, 2.00] | REPRODUCED |" in markdown_table(t)  # a lower bound above 1 suffices


def test_baseline_paper_speedup_is_one_by_definition():
    # The baseline reached its final loss at step 30 already (a plateau): computed, that read 40/30 = 1.33x.
    runs = [_run("baseline", [6.0, 5.5, 5.0, 5.0]), _run("kd_full", [5.5, 5.0, 4.9, 4.8])]
    t = speedups(runs)
    for axis in ("step", "gpu_hours"):
        assert t["baseline"].paper[axis]["mean"] == 1.0


# -- the calibrated cost axis -------------------------------------------------------------------------
def test_calibrated_cost_charges_each_step_kind():
    cal = Calibration(relative={"base": 1.0, "kd1": 1.4, "kd3": 2.2, "post": 1.0})
    base = _run("baseline", [5.0] * 10)
    kd = _run("kd_full", [5.0] * 10, teachers=("good",))
    stop = _run("kd_stop25", [5.0] * 10, teachers=("good",), stop=0.25)
    ens = _run("ensemble_mean", [5.0] * 10, teachers=("a", "b", "c"))
    sample = replace(ens, selection="sample")
    assert calibrated_cost(base, 100, cal) == 100
    assert calibrated_cost(kd, 50, cal) == pytest.approx(70)
    assert calibrated_cost(stop, 100, cal) == pytest.approx(25 * 1.4 + 75)
    assert calibrated_cost(ens, 10, cal) == pytest.approx(22) and calibrated_cost(sample, 10, cal) == pytest.approx(14)
    vs = [Variant("baseline"), Variant("kd_stop25", ("good",), 0.25), Variant("ensemble_mean", ("a", "b", "c")),
          Variant("ensemble_sample", ("a", "b", "c"), selection="sample")]
    assert kinds_for(vs) == ["base", "kd1", "kd3", "post"]


def test_verdicts_use_the_calibrated_axis():
    cal = Calibration(relative={"base": 1.0, "kd1": 2.0, "post": 1.0})  # a KD step costs two baseline steps
    t = speedups(_grid(4.8, 4.8), calibration=cal)
    # 1.41x in steps, but 56.6 / (40 * 2) = 0.71x once KD steps are charged what they cost
    assert t["kd_full"].frontier["calibrated"]["mean"] == pytest.approx(40 * 2**0.5 / 80, rel=1e-3)
    assert t["kd_full"].verdict == NOT_REPRODUCED
    assert t["kd_stop50"].frontier["calibrated"]["mean"] == pytest.approx(40 * 2**0.5 / (20 * 2 + 20), rel=1e-3)


def test_comparison_with_a_bounded_variant_keeps_the_bound():
    # kd_full beyond the best frontier point (>= 2.0 in steps), kd_stop50 inside it (1.68): early stopping is
    # then *less* efficient in every seed, whatever kd_full's exact value is.
    t = speedups(_grid(4.5, 4.7, jitter=0.0))
    t_rows = {n: t[n].frontier["step"] for n in ("kd_full", "kd_stop50")}
    assert t_rows["kd_full"]["bounds"] == [">="] * 3 and t_rows["kd_stop50"]["bounds"] == ["="] * 3
    f = {x["finding"].split()[0]: x for x in findings(t, TEXT)}
    assert f["Stopping"]["verdict"] == NOT_REPRODUCED, f["Stopping"]["evidence"]
    ratio = paired_ratio([(1.75, "=")] * 3, [(2.0, ">=")] * 3)
    assert ratio.bounds == ["<="] * 3 and verdict(ratio)[0] == NOT_REPRODUCED
    same_direction = paired_ratio([(2.1, ">=")] * 3, [(2.0, ">=")] * 3)
    assert same_direction.n == 0 and verdict(same_direction)[0] == INCONCLUSIVE
