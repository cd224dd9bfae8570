"""Training from a teacher-output cache (--kd_teacher_cache): with k >= vocabulary a cached run is the live run
(logged losses, final weights; MLM and CLM, gradient accumulation, resume), a mismatched or damaged cache is refused
in one line before anything is written, and the run is charged its share of the production pass."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_kd.text import cache_producer
from run_scripts.run_clm_kd import main as clm_main
from run_scripts.run_mlm_kd import main as mlm_main
from tests.support.models import tiny_gpt2
from tests.support.scripts import build_env, error_lines, run_script, script_args, tiny_model, truncate

FULL = ("--top_k", "100000", "--logp_dtype", "float32")  # k >= vocabulary, exact dtype: the live distribution


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cached")
    with pytest.MonkeyPatch.context() as mp:
        e = build_env(root / "env")
        mp.setenv("HF_KD_CACHE", str(e.cache))
        tiny_model(e.inputs / "teacher-mlm", e.vocab_size, seed=1)
        tiny_gpt2(vocab_size=e.vocab_size, seed=1).save_pretrained(str(e.inputs / "teacher-clm"))
    return e


@pytest.fixture(autouse=True)
def _hf_cache(env, monkeypatch):
    monkeypatch.setenv("HF_KD_CACHE", str(env.cache))


def argv(env, task, out, *extra, max_steps=4, teacher=True):
    model = ("--model_preset", "tiny") + (("--block_size", "32") if task == "clm" else ())
    t = ("--teacher_model_name_or_path", str(env.inputs / f"teacher-{task}")) if teacher else ()
    # A fixed tokenizer: a tokenizer trained on other data would be refused first (tokenizer_hash), not data_hash.
    # SGD: the update is lr x gradient, so the weights compare the two loss paths' gradients; Adam would turn
    # float-rounding differences in near-zero gradient entries into steps of up to lr (3e-6 at the preset's lr).
    return script_args(env, out, *model, "--tokenizer_name", str(env.tokenizer), "--seed", "3", "--kd_alpha", "0.5",
                       "--kd_temperature", "2", "--optim", "sgd", "--logging_steps", "1", *t, *extra,
                       max_steps=max_steps)


def produce(env, task, folder, *extra, max_steps=4):
    return cache_producer.main(argv(env, task, folder, "--task", task, *FULL, *extra, max_steps=max_steps))


def train(task, args):
    return (clm_main if task == "clm" else mlm_main)(args)


def logged(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: h[k] for k in ("loss", "kd_loss", "kd_weight") if k in h} for h in history if "loss" in h]


def assert_same_run(a, b):
    la, lb = logged(a), logged(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), (k, x, y)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task,extra", [("mlm", ()), ("clm", ()), ("mlm", ("--gradient_accumulation_steps", "2")),
                                        ("clm", ("--gradient_accumulation_steps", "2", "--kd_stop_steps", "3")),
                                        # full-sequence logits: the masked rows taken from them (CE and KD fused)
                                        ("mlm", ("--sparse_mlm_head", "false")),
                                        # KD at every position, CE at the masked ones: the two taken apart
                                        ("mlm", ("--kd_positions", "all"))])
def test_cached_run_with_full_vocabulary_equals_the_live_run(env, tmp_path, task, extra):
    produce(env, task, tmp_path / "cache", *extra)
    train(task, argv(env, task, tmp_path / "live", *extra))
    cached = train(task, argv(env, task, tmp_path / "cached", *extra, "--kd_teacher_cache", str(tmp_path / "cache"),
                              teacher=False))
    assert cached["teacher_forwards"] == 0 and cached["teacher_cache_gpu_hours"] > 0
    assert_same_run(tmp_path / "live", tmp_path / "cached")


def test_resumed_cached_run_equals_the_uninterrupted_one(env, tmp_path):
    produce(env, "mlm", tmp_path / "cache", max_steps=6)
    common = ("--kd_teacher_cache", str(tmp_path / "cache"), "--save_strategy", "steps", "--save_steps", "3")
    train("mlm", argv(env, "mlm", tmp_path / "whole", *common, max_steps=6))
    shutil.copytree(tmp_path / "whole/checkpoint-3", tmp_path / "parts/checkpoint-3")  # as if stopped after step 3
    train("mlm", argv(env, "mlm", tmp_path / "parts", *common, "--resume_from_checkpoint", "latest", max_steps=6))
    assert logged(tmp_path / "parts")[-3:] == logged(tmp_path / "whole")[-3:]
    w1, w2 = load_file(str(tmp_path / "whole/model.safetensors")), load_file(str(tmp_path / "parts/model.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # bit-equal


def test_cache_production_share_is_charged_amortised_over_readers(env, tmp_path):
    m = produce(env, "mlm", tmp_path / "cache", max_steps=4)
    full = train("mlm", argv(env, "mlm", tmp_path / "a", "--kd_teacher_cache", str(tmp_path / "cache"),
                             "--kd_stop_steps", "2"))
    shared = train("mlm", argv(env, "mlm", tmp_path / "b", "--kd_teacher_cache", str(tmp_path / "cache"),
                               "--kd_stop_steps", "2", "--kd_teacher_cache_readers", "4"))
    # KD for 2 of the 4 cached steps: half the production pass, then a quarter of that over 4 readers.
    assert full["teacher_cache_gpu_hours"] == pytest.approx(m.device_hours * 2 / 4)
    assert shared["teacher_cache_gpu_hours"] == pytest.approx(m.device_hours * 2 / 4 / 4)
    assert full["gpu_hours"] > 0 and "teacher_cache_gpu_hours" in json.loads(
        (tmp_path / "a/trainer_state.json").read_text())["log_history"][0]


@pytest.fixture(scope="module")
def mlm_cache(env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("refuse") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_KD_CACHE", str(env.cache))
        produce(env, "mlm", folder, "--top_k", "8", "--logp_dtype", "float16", "--kd_stop_steps", "3")
    return folder


# (flag changed for the reading run, the manifest field the refusal names)
MISMATCHES = [
    (("--seed", "4"), "seed"),
    (("--data_seed", "9"), "data_seed"),
    (("--per_device_train_batch_size", "2"), "per_device_train_batch_size"),
    (("--gradient_accumulation_steps", "2"), "gradient_accumulation_steps"),
    (("--max_seq_length", "16"), "block_size"),
    (("--max_train_samples", "12"), "max_train_samples"),
    (("--kd_positions", "all"), "kd_positions"),
    (("--mlm_probability", "0.2"), "mlm_probability"),
    (("--kd_temperature", "1"), "temperature"),
    (("--kd_stop_steps", "4"), "steps"),
    (("--kd_teacher_selection", "sample"), "teacher_selection"),
]


def _refused(env, tmp_path, capsys, args, field):
    out = tmp_path / "out"
    rc, err = run_script(args, capsys)
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert field in lines[0], lines[0]
    assert not out.exists()  # nothing written: not even the output folder
    return lines[0]


@pytest.mark.parametrize("flags,field", MISMATCHES, ids=[f for _, f in MISMATCHES])
def test_a_cache_for_another_run_is_refused_naming_the_field_and_both_values(env, mlm_cache, tmp_path, capsys,
                                                                             flags, field):
    base = argv(env, "mlm", tmp_path / "out", "--kd_teacher_cache", str(mlm_cache), "--kd_stop_steps", "3",
                teacher=False)
    line = _refused(env, tmp_path, capsys, base + list(flags), field)
    if field != "steps":
        assert "but this run's is" in line


def test_a_cache_for_other_data_a_teacher_or_world_size_is_refused(env, mlm_cache, tmp_path, capsys):
    other = env.inputs / "other.txt"
    other.write_text(env.train.read_text() + "zo ka lo.\n")
    base = argv(env, "mlm", tmp_path / "out", "--kd_teacher_cache", str(mlm_cache), "--kd_stop_steps", "3")
    swapped = [str(other) if a == str(env.train) else a for a in base]
    _refused(env, tmp_path, capsys, swapped, "data_hash")
    tiny_model(env.inputs / "teacher-other", env.vocab_size, seed=5)
    other_teacher = [str(env.inputs / "teacher-other") if a.endswith("teacher-mlm") else a for a in base]
    _refused(env, tmp_path, capsys, other_teacher, "teacher_fingerprints")
    manifest = json.loads((mlm_cache / "manifest.json").read_text())
    two = tmp_path / "two"
    two.mkdir()
    for p in mlm_cache.iterdir():
        (two / p.name).write_bytes(p.read_bytes())
    (two / "manifest.json").write_text(json.dumps({**manifest, "world_size": 2}))
    line = _refused(env, tmp_path, capsys, [str(two) if a == str(mlm_cache) else a for a in base], "world_size")
    assert "is 2 but this run's is 1" in line


def test_a_truncated_shard_is_refused_before_training(env, mlm_cache, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in mlm_cache.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    shard = sorted(broken.glob("shard-*.safetensors"))[0]
    truncate(shard)
    line = _refused(env, tmp_path, capsys, argv(env, "mlm", tmp_path / "out", "--kd_teacher_cache", str(broken),
                                                 "--kd_stop_steps", "3", teacher=False), "truncated")
    assert shard.name in line


def test_a_missing_cache_and_a_reverse_kl_run_are_refused_in_one_line(env, mlm_cache, tmp_path, capsys):
    _refused(env, tmp_path, capsys, argv(env, "mlm", tmp_path / "out", "--kd_teacher_cache", str(tmp_path / "none"),
                                         teacher=False), "manifest.json")
    _refused(env, tmp_path, capsys, argv(env, "mlm", tmp_path / "out", "--kd_teacher_cache", str(mlm_cache),
                                         "--kd_divergence", "reverse_kl", teacher=False), "kd_divergence")
