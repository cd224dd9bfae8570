from collections import Counter

import pytest

from hf_kd.core.schedule import kd_is_active, kd_weight, resolve_kd_stop_step, teacher_indices, teachers_per_step


def test_stop_step_forms():
    assert resolve_kd_stop_step(100) == 100  # neither set: KD throughout
    assert resolve_kd_stop_step(100, kd_stop_ratio=0.25) == 25
    assert resolve_kd_stop_step(10, kd_stop_ratio=0.33) == 4  # ceil
    assert resolve_kd_stop_step(100, kd_stop_ratio=0.5, kd_stop_steps=7) == 7  # steps win


def test_stop_steps_beyond_max_warns(caplog):
    assert resolve_kd_stop_step(10, kd_stop_steps=20) == 20
    assert "KD stays on for the whole run" in caplog.text


def test_active_and_weight_are_pure_functions_of_step():
    assert [kd_is_active(s, 3) for s in range(5)] == [True, True, True, False, False]
    assert [kd_weight(s, 0.7, 2) for s in range(4)] == [0.7, 0.7, 0.0, 0.0]


def test_mean_uses_all_teachers():
    assert teacher_indices(5, 3, "mean") == [0, 1, 2]


def test_sample_is_deterministic_and_covers_teachers():
    a = [teacher_indices(s, 3, "sample", seed=42) for s in range(300)]
    b = [teacher_indices(s, 3, "sample", seed=42) for s in range(300)]
    assert a == b and all(len(x) == 1 for x in a)
    counts = Counter(x[0] for x in a)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 60
    assert a != [teacher_indices(s, 3, "sample", seed=43) for s in range(300)]


def test_selection_errors():
    with pytest.raises(ValueError, match="kd_teacher_selection='best'"):
        teacher_indices(0, 2, "best")
    with pytest.raises(ValueError, match="at least one teacher"):
        teacher_indices(0, 0, "sample")


@pytest.mark.parametrize("ratio,max_steps,stop", [(0.55, 100, 55), (0.07, 100, 7), (0.14, 400, 56), (0.33, 10, 4)])
def test_stop_step_has_no_float_error(ratio, max_steps, stop):
    """ceil(0.55 * 100) is 56 in floats; the stop step is computed exactly (55)."""
    assert resolve_kd_stop_step(max_steps, kd_stop_ratio=ratio) == stop


def test_agreeing_stop_forms_are_accepted():
    """--kd_stop_steps 55 --kd_stop_ratio 0.55 (max_steps 100) agree and must be accepted."""
    from types import SimpleNamespace

    from hf_kd.core.kd_args import validate_kd_fields

    args = SimpleNamespace(kd_alpha=0.5, kd_temperature=2.0, kd_stop_ratio=0.55, kd_stop_steps=55,
                           kd_teacher_selection="mean", kd_divergence="forward_kl")
    validate_kd_fields(args, max_steps=100)
    args.kd_stop_steps = 56
    with pytest.raises(ValueError, match="ratio gives step 55"):
        validate_kd_fields(args, max_steps=100)


def test_teachers_per_step_counts_what_teacher_indices_runs():
    for n in (1, 3):
        for selection in ("mean", "sample"):
            assert teachers_per_step(n, selection) == len(teacher_indices(5, n, selection, seed=1))
    assert teachers_per_step(0, "sample") == 0  # no teachers: nothing runs
