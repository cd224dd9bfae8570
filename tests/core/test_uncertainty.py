"""The one uncertainty rule: speed-ups summarised in log space (geometric mean, exponentiated interval), verdicts."""

import math

import pytest

from hf_kd.core.uncertainty import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Spread,
    format_spread,
    paired_ratio,
    speedup_spread,
    spread_of,
    verdict,
)


# -- the rule on spreads -----------------------------------------------------------------------------
@pytest.mark.parametrize("values, bounds, expected", [
    ([1.30, 1.35, 1.28], None, REPRODUCED),          # interval well above 1
    ([0.80, 0.78, 0.83], None, NOT_REPRODUCED),      # well below 1
    ([1.20, 0.85, 1.10], None, INCONCLUSIVE),        # mean above 1 but the interval contains it
    ([1.50], None, INCONCLUSIVE),                    # one seed never decides
    ([1.30, 1.35, 1.28], ["=", "<=", "="], INCONCLUSIVE),  # an upper bound cannot support "faster"
    ([0.80, 0.78, 0.83], ["=", ">=", "="], INCONCLUSIVE),  # a lower bound cannot support "slower"
    ([1.30, 1.35, 1.28], ["=", ">=", "="], REPRODUCED),    # ... but supports "faster"
])
def test_verdict_rule(values, bounds, expected):
    v, why = verdict(Spread(values, bounds or [], log=True))
    assert v == expected, why
    if len(values) == 1:
        assert why == "1 seed"


def test_interval_is_student_t_90():
    s = Spread([1.0, 2.0, 3.0])
    lo, hi = s.interval
    assert s.mean == 2.0 and s.std == pytest.approx(1.0)
    assert (lo, hi) == (pytest.approx(2.0 - 2.920 / 3**0.5), pytest.approx(2.0 + 2.920 / 3**0.5))
    assert verdict(spread_of([(1.3, "="), (None, ""), (1.4, "=")]))[0] == INCONCLUSIVE  # a missing seed




def test_opposite_speedups_cancel_in_the_geometric_mean():
    """0.5x on one seed and 2.0x on the other is no gain: 1.00x (an arithmetic mean would say 1.25x)."""
    s = speedup_spread([(0.5, "="), (2.0, "=")])
    assert s.mean == pytest.approx(1.0)
    assert spread_of([(0.5, "="), (2.0, "=")]).mean == pytest.approx(1.25)  # the bias the log scale removes
    assert verdict(s)[0] == INCONCLUSIVE
    assert format_spread(s).startswith("1.00x")


@pytest.mark.parametrize("values", [[1.87, 0.6], [2.51, 0.4, 5.0], [0.05, 9.0]])
def test_speedup_interval_is_never_at_or_below_zero(values):
    """Two or three widely spread seeds gave arithmetic intervals like [-3.56, 8.57]; the log-space one stays > 0."""
    s = speedup_spread([(v, "=") for v in values])
    lo, hi = s.interval
    assert 0 < lo < s.mean < hi
    log_mean = sum(math.log(v) for v in values) / len(values)
    assert math.log(lo) + math.log(hi) == pytest.approx(2 * log_mean)  # symmetric in log space


def test_log_interval_is_student_t_on_the_logs():
    s = speedup_spread([(1.0, "="), (2.0, "="), (4.0, "=")])
    lo, hi = s.interval
    assert s.mean == pytest.approx(2.0) and s.std == pytest.approx(math.log(2.0))
    assert lo == pytest.approx(2.0 * math.exp(-2.920 * math.log(2.0) / 3**0.5))
    assert hi == pytest.approx(2.0 * math.exp(2.920 * math.log(2.0) / 3**0.5))


def test_a_seed_that_never_reached_its_target_is_not_dropped_from_the_mean():
    """One "not reached" seed: no mean, no interval, the reached values listed, the verdict inconclusive."""
    s = speedup_spread([(1.3, "="), (None, ""), (1.4, "=")])
    assert s.mean is None and s.interval is None
    assert verdict(s) == (INCONCLUSIVE, "1 of 3 seeds without a value")
    assert format_spread(s) == "not reached on 1 of 3 seeds (reached: 1.30x, 1.40x)"
    assert format_spread(speedup_spread([(None, "")] * 2)) == "not reached on 2 of 2 seeds"


def test_arithmetic_spread_for_other_quantities():
    s = Spread([1.0, 2.0, 3.0])
    lo, hi = s.interval
    assert s.mean == 2.0 and s.std == pytest.approx(1.0)
    assert (lo, hi) == (pytest.approx(2.0 - 2.920 / 3**0.5), pytest.approx(2.0 + 2.920 / 3**0.5))
    assert verdict(spread_of([(1.3, "="), (None, ""), (1.4, "=")]))[0] == INCONCLUSIVE


def test_ratio_of_two_variants_is_judged_around_one():
    better = paired_ratio([(1.5, "="), (1.6, "="), (1.55, "=")], [(1.2, "="), (1.25, "="), (1.2, "=")])
    assert better.log and verdict(better)[0] == REPRODUCED
    worse = paired_ratio([(1.2, "="), (1.25, "="), (1.2, "=")], [(1.5, "="), (1.6, "="), (1.55, "=")])
    assert verdict(worse)[0] == NOT_REPRODUCED


def test_a_nonpositive_ratio_is_refused():
    with pytest.raises(ValueError, match="positive"):
        speedup_spread([(0.0, "="), (1.0, "=")])
