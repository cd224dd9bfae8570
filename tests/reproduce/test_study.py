"""The regime study (``hf-kd reproduce --study``): shared baselines, keys that ignore what does not shape a run,
a report that follows from its cells' run logs."""

from dataclasses import replace
from pathlib import Path

import pytest

from hf_kd.core.errors import UserError
from hf_kd.reproduce import study
from hf_kd.reproduce.jobs import comparable
from hf_kd.reproduce.presets import MLM_TINY
from hf_kd.reproduce.text import preset_key
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import SpyBackend


def _key(**preset):
    p = {**preset_key(MLM_TINY), **preset}
    return {"preset": p, "corpus": "c", "variant": {"name": "baseline", "budget": 1.0, "role": "student"},
            "seed": 0, "steps": 800, "teachers": []}


def test_baseline_keys_ignore_kd_settings_budget_and_role_but_not_training_settings():
    base = _key()
    frontier_point = {**_key(steps=400, kd_alpha=0.9, kd_temperature=4.0, kd_positions="all", good_teacher_steps=4800,
                             frontier=[0.75]), "variant": {"name": "baseline_2x", "budget": 2.0, "role": "frontier"}}
    assert comparable(frontier_point) == comparable(base)
    for changed in (_key(learning_rate=1e-3), _key(eval_every=20), {**base, "steps": 400}, {**base, "seed": 1}):
        assert comparable(changed) != comparable(base)


def test_kd_run_keys_keep_the_kd_settings():
    kd = {**_key(), "teachers": [{"path": "t", "meta": {}}], "variant": {"name": "kd_full", "budget": 1.0}}
    assert comparable({**kd, "preset": {**kd["preset"], "frontier": [9.0]}}) == comparable(kd)
    for k, v in (("kd_alpha", 0.9), ("kd_temperature", 4.0), ("kd_positions", "all"), ("steps", 800)):
        assert comparable({**kd, "preset": {**kd["preset"], k: v}}) != comparable(kd), k


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    path = write_tiny_corpus(tmp_path, monkeypatch)
    return str(path)


@pytest.mark.slow
def test_study_shares_baselines_across_cells_and_its_report_follows_from_the_logs(corpus, tmp_path, monkeypatch):
    trained = []

    class Counting(SpyBackend):
        def train_one(self, out, steps, seed, teachers=(), *a, **k):
            trained.append((Path(out).name, steps, seed, bool(teachers)))
            return super().train_one(out, steps, seed, teachers, *a, **k)

    base = replace(MLM_TINY, vocab_size=200, max_seq_length=32, batch_size=4, eval_every=2)
    out = tmp_path / "study"
    res = study.run_study(str(out), seeds=2, workers=1, base=base, scale=0.02, corpus_path=corpus, backend_for=Counting)
    grid = study.cells(0.02)
    students = [t for t in trained if t[0] != "good-" and "seed" in t[0]]
    baselines = [t for t in students if not t[3]]
    # every (steps, seed) baseline trained once, though several cells ask for it (e.g. 16 steps: the 2x point
    # of the 8-step cells, the 1x baseline of the 16-step cells; without sharing: 62 trainings instead of 18)
    assert len(baselines) == len({(s, seed) for _, s, seed, _ in baselines})
    wanted = {(round(c.changes["steps"] * b), seed) for c in grid
              for b in (1.0, *c.changes.get("frontier", study.FRONTIER)) for seed in range(2)}
    assert {(s, seed) for _, s, seed, _ in baselines} == wanted
    assert sum(len(c.variants) for c in grid) * 2 == len([t for t in students if t[3]])
    assert {c["cell"] for c in res["cells"]} == {c.name for c in grid}
    assert (out / "study.png").is_file() and "| budget | 32 |" in (out / "study.md").read_text()
    # rerun: nothing trained again
    trained.clear()
    study.run_study(str(out), seeds=2, workers=1, base=base, scale=0.02, corpus_path=corpus, backend_for=Counting)
    assert [t for t in trained if "seed" in t[0]] == []
    assert "follows" in study.check(out)["markdown"]
    md = (out / "study.md").read_text()
    (out / "study.md").write_text(md.replace("| budget | 32 |", "| budget | 33 |"))
    with pytest.raises(UserError, match="does not follow"):
        study.check(out)


def test_unknown_cell_is_refused(tmp_path):
    with pytest.raises(UserError, match="steps9999.*expected some of steps1600"):
        study.run_study(str(tmp_path), only_cells=["steps9999"], backend_for=SpyBackend)
    assert not (tmp_path / "cells").exists()


def test_study_flags_are_checked(tmp_path, capsys):
    from hf_kd.cli import main as cli_main

    assert cli_main(["reproduce", "--study", "--task", "clm", "--output_dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study with --task clm" in err[0]
    assert cli_main(["reproduce", "--study", "--rerender", "--output_dir", str(tmp_path / "none")]) == 2
    assert "no study cells found" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "none").exists()
