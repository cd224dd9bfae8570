"""Two protocol settings for the paper's remaining questions: a KD student's own learning rate (``kd_learning_rate``,
for the paper code's alpha 0.9 / T 4) and one data stream for every seed (``data_seed``, the paired design): the
flags they give each run, and which runs' keys and calibration they change."""

from dataclasses import replace

import pytest

from hf_kd.core.errors import UserError
from hf_kd.reproduce.calibrate import load_or_measure
from hf_kd.reproduce.jobs import comparable
from hf_kd.reproduce.presets import CLM_TINY, MLM_TINY, apply_overrides
from hf_kd.reproduce.protocol import Calibration, Variant
from hf_kd.reproduce.text import preset_key, training_args

KD = Variant("kd_stop50", teachers=("good",), kd_stop_ratio=0.5)
BASELINE = Variant("baseline")


def _key(variant: str = "kd_full", teachers=("good",), **preset) -> dict:
    return {"preset": {**preset_key(MLM_TINY), **preset}, "corpus": "c", "variant": {"name": variant},
            "seed": 0, "steps": 400, "teachers": [{"name": t, "steps": 1200} for t in teachers]}


def test_kd_learning_rate_sets_the_kd_students_rate_and_no_other(tmp_path):
    p = replace(MLM_TINY, kd_learning_rate=5e-4)
    assert training_args(p, tmp_path, 10, 0, KD).learning_rate == 5e-4
    assert training_args(p, tmp_path, 10, 0, BASELINE).learning_rate == p.learning_rate  # the frontier's rate
    assert training_args(p, tmp_path, 10, 0, None).learning_rate == p.learning_rate  # a teacher's training
    assert training_args(MLM_TINY, tmp_path, 10, 0, KD).learning_rate == MLM_TINY.learning_rate


def test_data_seed_fixes_the_data_stream_but_not_the_initialisation(tmp_path):
    fixed = training_args(replace(CLM_TINY, data_seed=7), tmp_path, 10, 2, KD)
    assert (fixed.seed, fixed.data_seed) == (2, 7)
    default = training_args(CLM_TINY, tmp_path, 10, 2, KD)
    assert (default.seed, default.data_seed) == (2, 2)


def test_kd_learning_rate_is_in_kd_keys_only_and_data_seed_in_every_key():
    assert comparable(_key(kd_learning_rate=5e-4)) != comparable(_key())
    assert comparable(_key("baseline", (), kd_learning_rate=5e-4)) == comparable(_key("baseline", ()))
    for variant, teachers in (("kd_full", ("good",)), ("baseline", ())):
        assert comparable(_key(variant, teachers, data_seed=0)) != comparable(_key(variant, teachers)), variant


def test_results_saved_before_a_none_default_field_existed_are_still_recognised():
    saved = _key()
    for field in ("kd_learning_rate", "data_seed"):
        del saved["preset"][field]
    assert comparable(saved) == comparable(_key())


def test_a_kd_run_ignores_the_budget_of_a_teacher_it_does_not_read():
    # the teachers it reads are in its key with their own steps: a poor teacher retrained at another budget leaves
    # KD from the good teacher finished
    assert comparable(_key(poor_teacher_steps=120)) == comparable(_key(poor_teacher_steps=30))
    retrained = _key()
    retrained["teachers"][0]["steps"] = 360
    assert comparable(retrained) != comparable(_key())


def test_calibration_is_reused_across_rates_and_teacher_budgets_but_not_the_temperature(tmp_path):
    measured = []

    def measure():
        measured.append(1)
        return Calibration(relative={"base": 1.0, "kd1": 1.5})

    path, base = tmp_path / "calibration.json", {"preset": preset_key(CLM_TINY), "kinds": ["base", "kd1"]}
    load_or_measure(path, base, measure)
    for change in ({"learning_rate": 1e-3}, {"kd_learning_rate": 5e-4}, {"poor_teacher_steps": 30}, {"data_seed": 3}):
        cal = load_or_measure(path, {**base, "preset": {**base["preset"], **change}}, measure)
        assert cal.relative == {"base": 1.0, "kd1": 1.5} and len(measured) == 1, change
    load_or_measure(path, {**base, "preset": {**base["preset"], "kd_temperature": 4.0}}, measure)
    assert len(measured) == 2


@pytest.mark.parametrize("pair", ["kd_learning_rate=0", "data_seed=-1", "kd_learning_rate=fast"])
def test_bad_values_of_the_new_settings_are_refused_naming_them(pair):
    with pytest.raises(UserError, match=pair.split("=")[0]):
        apply_overrides(MLM_TINY, [pair])
