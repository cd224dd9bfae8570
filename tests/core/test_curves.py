"""The budget frontier: cost interpolated linearly in log cost between the baselines' (cost, quality) points."""

import math

import pytest

from hf_kd.core.curves import Curve, frontier_cost, frontier_speedup


def test_frontier_cost_is_interpolated_in_log_cost():
    """Half-way in quality between budgets 100 and 400 is the geometric midpoint 200, not the arithmetic 250:
    quality falls about linearly in log-compute, and a straight line in cost would credit a run with a frontier
    cost the frontier does not need."""
    pts = [(100.0, 6.0), (400.0, 5.0)]
    assert frontier_cost(pts, 5.5, higher_is_better=False) == pytest.approx(200.0)
    assert frontier_cost(pts, 6.0, higher_is_better=False) == pytest.approx(100.0)
    assert frontier_cost(pts, 5.0, higher_is_better=False) == pytest.approx(400.0)
    acc = [(100.0, 0.50), (400.0, 0.70)]
    assert frontier_cost(acc, 0.65, higher_is_better=True) == pytest.approx(100 * 4 ** 0.75)


def test_log_interpolation_is_exact_on_a_log_linear_frontier():
    """On q = a - b log(c) the interpolated cost of any quality between points is the true cost."""
    pts = [(c, 7.0 - 0.4 * math.log(c)) for c in (50.0, 100.0, 200.0, 800.0)]
    for true_cost in (60.0, 150.0, 333.0, 700.0):
        q = 7.0 - 0.4 * math.log(true_cost)
        assert frontier_cost(pts, q, higher_is_better=False) == pytest.approx(true_cost)


def test_frontier_speedup_off_the_ends_and_inside():
    def curve(cost, q):
        return Curve("b", [cost / 2, cost], [q + 0.5, q], higher_is_better=False)

    frontier = [curve(100.0, 6.0), curve(400.0, 5.0)]
    assert frontier_speedup(frontier, curve(100.0, 5.5)) == pytest.approx(2.0)
    assert frontier_speedup(frontier, curve(100.0, 4.0)) is None  # beyond the best point: no extrapolation
    assert frontier_cost([(0.0, 6.0), (10.0, 5.0)], 5.5, higher_is_better=False) == pytest.approx(5.0)  # linear at 0
