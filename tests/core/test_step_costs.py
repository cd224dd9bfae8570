"""Steps charged at calibrated cost: KD steps before the stop step at their kind's cost, plain steps after."""

import pytest

from hf_kd.core.step_costs import charged_steps, kd_kind


def test_kd_steps_before_the_stop_and_plain_steps_after():
    rel = {"base": 1.0, "kd1": 1.5, "kd3": 3.2, "post": 1.02}
    assert charged_steps(100, 0, 0, rel) == 100
    assert charged_steps(100, 1, 40, rel) == pytest.approx(40 * 1.5 + 60 * 1.02)
    assert charged_steps(30, 1, 40, rel) == pytest.approx(30 * 1.5)  # before the stop: every step is KD
    assert charged_steps(10, 3, 10, rel) == pytest.approx(32.0)
    assert kd_kind(3) == "kd3"


def test_generic_kd_cost_and_post_defaulting_to_base():
    assert charged_steps(10, 2, 5, {"base": 1.0, "kd": 2.0}) == pytest.approx(5 * 2.0 + 5 * 1.0)
    with pytest.raises(KeyError, match="2 teacher"):
        charged_steps(10, 2, 5, {"base": 1.0, "kd1": 1.5})
