"""hf-kd reproduce with recycled teacher outputs: caches produced once per (teachers, seed), three cost views."""

import json
from dataclasses import replace

import pytest

from hf_kd.cli import main as cli_main
from hf_kd.reproduce.costs import CostModel, shared_steps
from hf_kd.reproduce.presets import CLM_TINY, MLM_TINY
from hf_kd.reproduce.protocol import Calibration, plan_jobs, select_variants
from hf_kd.reproduce.report import rerender
from hf_kd.reproduce.run import run_protocol
from hf_kd.reproduce.text import TextBackend
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import synthetic_run

CAL = Calibration(relative={"base": 1.0, "kd1": 1.5, "post": 1.0, "cached": 1.1, "produce1": 0.3})


def _cached(variant, stop=None, seed=0, cache="c0"):
    r = synthetic_run(variant, [5.0] * 10, teachers=("good",), stop=stop, seed=seed)  # 100 steps
    return replace(r, teacher_outputs="cached", cache=cache)


def test_each_cached_step_is_charged_its_production_split_among_its_readers():
    full, s25, s50 = _cached("kd_full"), _cached("kd_stop25", 0.25), _cached("kd_stop50", 0.5)
    other_seed = _cached("kd_full", seed=1, cache="c1")  # another stream: its own cache, its only reader
    costs = CostModel(CAL, [full, s25, s50, other_seed])
    # steps 0-24 read by 3 runs, 25-49 by 2, 50-99 by kd_full alone
    assert shared_steps([100, 25, 50], 100) == pytest.approx(25 / 3 + 25 / 2 + 50)
    assert costs.cost(full, 100, "amortised") == pytest.approx(100 * 1.1 + 0.3 * (25 / 3 + 25 / 2 + 50))
    assert costs.cost(s25, 100, "amortised") == pytest.approx(25 * 1.1 + 75 + 0.3 * 25 / 3)
    assert costs.cost(other_seed, 100, "amortised") == pytest.approx(100 * 1.1 + 0.3 * 100)
    # the readers' shares add up to the whole production of the cache, no more, no less
    assert sum(costs.cost(r, 100, "amortised") - costs.cost(r, 100, "sunk") for r in (full, s25, s50)) == \
        pytest.approx(100 * 0.3)
    assert costs.cost(s50, 100, "sunk") == pytest.approx(50 * 1.1 + 50)
    assert costs.production(1, 100) == pytest.approx(30.0)  # the plan's estimate of producing a 100-step cache
    assert costs.cost(s50, 100, "live") == pytest.approx(50 * 1.5 + 50)
    live = synthetic_run("kd_full_live", [5.0] * 10, teachers=("good",))
    assert {costs.cost(live, 100, v) for v in ("live", "amortised", "sunk")} == {150.0}


def test_cached_protocol_plans_one_cache_per_teacher_and_stream_before_its_readers(tmp_path):
    vs = select_variants((0.5,), None, full=True, teacher_outputs="cached")
    assert "kd_full_live" in [v.name for v in vs]
    jobs = plan_jobs(replace(MLM_TINY, steps=100), vs, seeds=2, out=tmp_path)
    caches = [j for j in jobs if j.variant is None and j.cache is not None]
    # per seed: good (kd_full and both stops), poor, the ensemble with mean and with sample
    assert len(caches) == 8 and {c.cache.steps for c in caches} == {100}
    by_name = {j.name: i for i, j in enumerate(jobs)}
    for j in jobs:
        if j.variant is not None and j.variant.outputs == "cached":
            assert j.cache.seed == j.seed and j.cache.teachers == j.variant.teachers
            assert j.cache.name in j.needs and by_name[j.cache.name] < jobs.index(j)  # produced before it is read
    live = [j for j in jobs if j.variant is not None and j.variant.name == "kd_full_live"]
    assert len(live) == 2 and all(j.cache is None for j in live)
    # only the early stops: the cache covers the latest stop, not the whole run
    short = plan_jobs(replace(MLM_TINY, steps=100), select_variants((0.5,), ["kd_stop25", "kd_stop50"], False,
                                                                    "cached"), 1, tmp_path)
    assert [j.cache.steps for j in short if j.variant is None and j.cache is not None] == [50]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_cached_reproduce_end_to_end_reuses_its_caches_and_reports_three_cost_views(tmp_path, monkeypatch, task):
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    base = CLM_TINY if task == "clm" else MLM_TINY
    p = replace(base, vocab_size=200, max_seq_length=32, batch_size=4, steps=8, eval_every=4,
                good_teacher_steps=12, frontier=(0.5, 2.0))
    out = tmp_path / "out"
    res = run_protocol(TextBackend(p, corpus), str(out), seeds=2, only=["kd_full", "kd_stop50"],
                       calibration_rounds=(2, 2), teacher_outputs="cached")
    runs = {(r["variant"], r["seed"]): r for r in res["runs"]}
    assert runs[("kd_full", 0)]["teacher_outputs"] == "cached" and runs[("kd_full", 0)]["teacher_forwards"] == 0
    assert runs[("kd_full_live", 1)]["teacher_forwards"] == 8  # the live twin runs its teacher at every step
    assert runs[("kd_full", 0)]["cache"] == runs[("kd_stop50", 0)]["cache"] != runs[("kd_full", 1)]["cache"]
    assert set(res["caches"]) == {"outputs-good-mean-seed0", "outputs-good-mean-seed1"}
    assert {"cached", "produce1", "kd1"} <= set(res["calibration"]["relative"])
    summary = res["summary"]["kd_full"]
    assert summary["calibrated_cost_sunk"]["mean"] < summary["calibrated_cost"]["mean"]  # production charged
    md = (out / "results.md").read_text()
    assert "## Cost views of KD with recycled teacher outputs" in md and "Cached vs live teacher" in md
    assert md.count("teacher outputs `outputs-good-mean-seed") == 2
    manifests = sorted(out.glob("teacher_outputs/*/manifest.json"))
    assert len(manifests) == 2 and json.loads(manifests[0].read_text())["steps"] == 8
    stamps = [m.stat().st_mtime_ns for m in manifests]
    # a rerun (here: one more variant) reads the existing caches: nothing produced again
    run_protocol(TextBackend(p, corpus), str(out), seeds=2, only=["kd_full", "kd_stop50", "kd_stop25"],
                 calibration_rounds=(2, 2), teacher_outputs="cached")
    assert [m.stat().st_mtime_ns for m in manifests] == stamps
    assert rerender(out, check=True)["markdown"].endswith("every number follows from its run logs")


def test_vision_refuses_cached_teacher_outputs(capsys):
    assert cli_main(["reproduce", "--task", "vision", "--teacher_outputs", "cached", "--output_dir", "/tmp/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher_outputs cached with --task vision is invalid" in err[0]
