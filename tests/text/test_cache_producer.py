"""hf-kd cache-teacher: the stored targets are those of the very batches the student trains on, at every
(step, micro-batch), across an epoch boundary and a short last accumulation step; resume keeps intact shards."""

import json

import pytest
import torch

from hf_kd.core.cli_utils import run_cli
from hf_kd.core.losses import teacher_log_probs
from hf_kd.core.sparse_kd import topk_targets
from hf_kd.core.teacher_cache import TeacherCache
from hf_kd.text import cache_producer
from hf_kd.text.trainer import DistillationTrainer
from tests.support.models import tiny_gpt2
from tests.support.scripts import build_env, script_args, tiny_model

# 16 sequences / batch 4 = 4 micro-batches per epoch; GA 3 -> steps of 3 and 1 micro-batches; 5 steps cross epochs.
GEOMETRY = ("--gradient_accumulation_steps", "3", "--seed", "3", "--kd_alpha", "0.5", "--kd_temperature", "2")


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = build_env(tmp_path / "env")
    monkeypatch.setenv("HF_KD_CACHE", str(e.cache))
    return e


def _teacher(env, task):
    path = env.inputs / f"teacher-{task}"
    if task == "clm":
        tiny_gpt2(vocab_size=env.vocab_size, seed=1).save_pretrained(str(path))
    else:
        tiny_model(path, env.vocab_size, seed=1)
    return path


def _argv(env, task, out, *extra, max_steps=5):
    model = ("--model_preset", "tiny") + (("--block_size", "32") if task == "clm" else ())
    return script_args(env, out, *model, *GEOMETRY, "--teacher_model_name_or_path", str(_teacher(env, task)),
                       *extra, max_steps=max_steps)


def _capture_training(monkeypatch, argv, task):
    """Run the training script and record (step, micro-batch) -> the inputs compute_loss received."""
    from run_scripts.run_clm_kd import main as clm_main
    from run_scripts.run_mlm_kd import main as mlm_main

    seen, original = {}, DistillationTrainer.compute_loss

    def spy(self, model, inputs, *a, **kw):
        if model.training:
            step = self.state.global_step
            mb = sum(1 for s, _ in seen if s == step)
            seen[(step, mb)] = {k: v.detach().clone() for k, v in inputs.items()}
        return original(self, model, inputs, *a, **kw)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", spy)
    (clm_main if task == "clm" else mlm_main)(argv)
    return seen


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_cached_targets_are_those_of_the_batches_training_feeds_compute_loss(env, tmp_path, monkeypatch, task):
    cache_dir = tmp_path / "cache"
    manifest = cache_producer.main(_argv(env, task, cache_dir, "--task", task, "--kd_stop_steps", "4",
                                         "--top_k", "16", "--steps_per_shard", "3"))
    assert manifest.teacher_dtype == "float32" and manifest.device_type == "cpu" and manifest.device_hours > 0
    assert manifest.steps == 4 and [(e.rank, e.first_step, e.stop_step) for e in manifest.shards] == [(0, 0, 3),
                                                                                                       (0, 3, 4)]
    seen = _capture_training(monkeypatch, _argv(env, task, tmp_path / "run", "--kd_stop_steps", "4"), task)
    assert sorted(seen)[:5] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]  # 3 + 1 micro-batches per epoch
    cache = TeacherCache.open(cache_dir)
    cls = "AutoModelForCausalLM" if task == "clm" else "AutoModelForMaskedLM"
    import transformers

    teacher = getattr(transformers, cls).from_pretrained(str(_teacher(env, task))).eval()
    for (step, mb), batch in sorted(seen.items()):
        if step >= 4:
            continue
        labels = batch["labels"]
        if task == "clm":  # position i predicts token i + 1: a KD row where that next token carries a label
            mask = torch.zeros_like(labels, dtype=torch.bool)
            mask[:, :-1] = labels[:, 1:] != -100
        else:
            mask = labels != -100
        with torch.no_grad():
            logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits[mask]
        want = topk_targets(teacher_log_probs([logits], 2.0), 16)
        got = cache.targets(step, mb, 0)
        assert torch.equal(got.ids, want.ids), (step, mb)
        torch.testing.assert_close(got.logp.float(), want.logp, atol=2e-3, rtol=1e-3)  # stored as float16
        torch.testing.assert_close(got.log_rest, want.log_rest)


def test_producer_batches_equal_training_batches_bit_for_bit(env, tmp_path, monkeypatch):
    from hf_kd.core.cli_utils import parse_args
    from hf_kd.text.cache_stream import training_batches
    from hf_kd.text.config import DistillationTrainingArguments
    from hf_kd.text.pretrain import build_trainer
    from hf_kd.text.script_args import DataArguments, ModelArguments

    argv = _argv(env, "mlm", tmp_path / "run", "--max_train_samples", "18", max_steps=6)  # 5 batches: last short
    m, d, a = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments), argv)
    produced = {(s, i): b for s, bs in training_batches(build_trainer(m, d, a), 6) for i, b in enumerate(bs)}
    seen = _capture_training(monkeypatch, argv, "mlm")
    assert sorted(produced) == sorted(seen) and len(seen) >= 8
    for key, batch in seen.items():
        assert set(batch) == set(produced[key])
        for name, value in batch.items():
            assert torch.equal(value, produced[key][name]), (key, name)


def test_interrupted_production_resumes_keeping_intact_shards(env, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    argv = _argv(env, "mlm", cache_dir, "--steps_per_shard", "2", "--top_k", "8")
    full = cache_producer.main(argv)
    reference = {e.name: e.sha256 for e in full.shards}
    # An interrupt after the first shard: no manifest, the first shard kept, the second damaged (as if half-written
    # by a different attempt), the third missing.
    (cache_dir / "manifest.json").unlink()
    progress = json.loads((cache_dir / "progress-00000.json").read_text())
    progress["shards"] = progress["shards"][:2]
    (cache_dir / "progress-00000.json").write_text(json.dumps(progress))
    names = sorted(reference)
    (cache_dir / names[1]).write_bytes((cache_dir / names[1]).read_bytes()[:-10])
    (cache_dir / names[2]).unlink()
    first_mtime = (cache_dir / names[0]).stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(cache_producer.ShardProducer, "targets",
                        lambda self, items, f=cache_producer.ShardProducer.targets: calls.append(items[0][0]) or
                        f(self, items))
    resumed = cache_producer.main(argv)
    assert calls == [2, 4]  # the damaged and the missing shard, not the intact first one
    assert (cache_dir / names[0]).stat().st_mtime_ns == first_mtime
    assert {e.name: e.sha256 for e in resumed.shards} == reference  # same bytes as the uninterrupted production


def test_cache_teacher_command_refuses_bad_flags_in_one_line(env, tmp_path, capsys):
    from hf_kd.cli import main

    out = tmp_path / "c"
    for extra, needle in ((("--top_k", "0"), "--top_k 0 is invalid"), (("--kd_alpha", "0"), "kd_alpha 0")):
        rc = main(["cache-teacher", *_argv(env, "mlm", out, *extra)])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(err) == 1 and needle in err[0], err
        assert not out.exists() or not any(out.iterdir())
    rc = run_cli(lambda: cache_producer.main(script_args(env, out)))
    assert rc == 2 and "needs --teacher_model_name_or_path" in capsys.readouterr().err


def test_rerun_on_a_finished_cache_does_nothing_and_other_flags_are_refused(env, tmp_path, monkeypatch, capsys):
    from hf_kd.cli import main

    out = tmp_path / "c"
    first = cache_producer.main(_argv(env, "mlm", out, "--top_k", "8", max_steps=2))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(cache_producer, "_run_shards", lambda *a: pytest.fail("a finished cache was produced again"))
    assert cache_producer.main(_argv(env, "mlm", out, "--top_k", "8", max_steps=2)) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    for extra, needle in ((("--top_k", "9"), "top_k 8 there, 9 here"), (("--top_k", "8", "--seed", "4"), "seed is 3 but this run's is 4")):
        rc = main(["cache-teacher", *_argv(env, "mlm", out, *extra, max_steps=2)])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc = main(["cache-teacher", *_argv(env, "mlm", foreign, max_steps=2)])
    assert rc == 2 and "is not empty ('notes.txt'" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_a_larger_producer_batch_and_row_chunks_store_the_same_targets(env, tmp_path, monkeypatch, task):
    from hf_kd.text import cache_targets

    argv = ("--top_k", "8", "--logp_dtype", "float32", "--task", task)
    cache_producer.main(_argv(env, task, tmp_path / "a", *argv))
    # 3 micro-batches per teacher forward, and the head / log-softmax / top-k over 7 rows at a time
    monkeypatch.setattr(cache_targets, "default_chunk_size", lambda vocab: 7)
    cache_producer.main(_argv(env, task, tmp_path / "b", *argv, "--producer_batch_size", "12"))
    a, b = TeacherCache.open(tmp_path / "a"), TeacherCache.open(tmp_path / "b")
    n = 0
    for step in range(5):
        for mb in range(3 if step % 2 == 0 else 1):
            x, y = a.targets(step, mb), b.targets(step, mb)
            assert torch.equal(x.ids, y.ids) and len(x) > 0
            torch.testing.assert_close(x.logp, y.logp, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(x.log_rest, y.log_rest, atol=1e-5, rtol=1e-5)
            n += 1
    assert n == 11


@pytest.mark.slow
def test_two_processes_write_disjoint_shards_addressed_by_rank(env, tmp_path):
    """torchrun x2 (gloo, CPU): rank r's micro-batch m of step s is the single process's micro-batch 2m + r of the
    same step at twice the accumulation (same global batch: accelerate hands rank r every second batch)."""
    import os
    import subprocess
    import sys

    from tests.support import REPO

    flags = ("--per_device_train_batch_size", "2", "--top_k", "8", "--logp_dtype", "float32", "--steps_per_shard", "1")
    one = _argv(env, "mlm", tmp_path / "one", *flags, "--gradient_accumulation_steps", "4", max_steps=2)
    two = _argv(env, "mlm", tmp_path / "two", *flags, "--gradient_accumulation_steps", "2", max_steps=2)
    cache_producer.main(one)
    run_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hf_kd.cli",
           "cache-teacher", *two]
    proc = subprocess.run(cmd, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, double = TeacherCache.open(tmp_path / "one"), TeacherCache.open(tmp_path / "two")
    assert double.manifest.world_size == 2 and single.manifest.world_size == 1
    assert sorted((e.rank, e.index) for e in double.manifest.shards) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({e.name for e in double.manifest.shards}) == 4
    double.verify()
    for step in range(2):
        for mb in range(2):
            for rank in range(2):
                x, y = double.targets(step, mb, rank), single.targets(step, 2 * mb + rank)
                assert len(x) > 0 and torch.equal(x.ids, y.ids), (step, mb, rank)
                torch.testing.assert_close(x.logp, y.logp)


@pytest.mark.parametrize("selection", ["mean", "sample"])
def test_ensembles_store_the_mixture_or_the_teacher_each_step_selects(env, tmp_path, selection):
    import transformers

    from hf_kd.core.cli_utils import parse_args
    from hf_kd.core.schedule import teacher_indices
    from hf_kd.text.cache_stream import training_batches
    from hf_kd.text.config import DistillationTrainingArguments
    from hf_kd.text.pretrain import build_trainer
    from hf_kd.text.script_args import DataArguments, ModelArguments

    second = tiny_model(env.inputs / "teacher-b", env.vocab_size, seed=2)
    argv = _argv(env, "mlm", tmp_path / "c", str(second), "--kd_teacher_selection", selection, "--top_k", "8",
                 "--logp_dtype", "float32", max_steps=4)  # the second path extends --teacher_model_name_or_path
    manifest = cache_producer.main(argv)
    assert len(manifest.teacher_fingerprints) == 2 and len(set(manifest.teacher_fingerprints)) == 2
    cache = TeacherCache.open(tmp_path / "c")
    teachers = [transformers.BertForMaskedLM.from_pretrained(str(p)).eval()
                for p in (_teacher(env, "mlm"), second)]
    m, d, a = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments),
                         [x for x in argv if x not in ("--top_k", "8", "--logp_dtype", "float32")])
    chosen = set()
    for step, batches in training_batches(build_trainer(m, d, a), 4):
        idx = teacher_indices(step, 2, selection, 3)
        chosen.update(idx)
        for mb, batch in enumerate(batches):
            mask = batch["labels"] != -100
            with torch.no_grad():
                logits = [teachers[i](**{k: v for k, v in batch.items() if k != "labels"}).logits[mask] for i in idx]
            want = topk_targets(teacher_log_probs(logits, 2.0), 8)
            got = cache.targets(step, mb)
            assert torch.equal(got.ids, want.ids), (step, mb)
            torch.testing.assert_close(got.logp, want.logp)
    assert chosen == {0, 1}  # sample drew both teachers over these steps; mean always uses both


def test_the_data_hash_covers_every_training_text(env, tmp_path):
    from hf_kd.core.cache_format import TeacherCacheError

    lines = env.train.read_text().splitlines()
    edited = env.inputs / "edited.txt"
    edited.write_text("\n".join(lines[:-1] + [lines[-1] + " ka"]) + "\n")  # only the very last document differs
    tok = ("--tokenizer_name", str(env.tokenizer))  # one tokenizer: it would otherwise be trained on each text
    a = cache_producer.main(_argv(env, "mlm", tmp_path / "a", *tok, max_steps=1))
    argv = _argv(env, "mlm", tmp_path / "b", *tok, max_steps=1)
    argv[argv.index(str(env.train))] = str(edited)
    b = cache_producer.main(argv)
    assert a.data_hash != b.data_hash and a.tokenizer_hash == b.tokenizer_hash
    assert a.shards[0].sha256 == b.shards[0].sha256  # step 0 never reads that document: only the data hash differs
    with pytest.raises(TeacherCacheError, match="cache's data_hash is"):
        TeacherCache.open(tmp_path / "a").check_matches(b)


def test_sampled_tokens_are_teacher_draws_with_their_log_probs_and_reproducible(env, tmp_path):
    import transformers

    from hf_kd.core.cli_utils import parse_args
    from hf_kd.text.cache_stream import training_batches
    from hf_kd.text.config import DistillationTrainingArguments
    from hf_kd.text.pretrain import build_trainer
    from hf_kd.text.script_args import DataArguments, ModelArguments

    extra = ("--sample_tokens", "16", "--logp_dtype", "float32")
    a = cache_producer.main(_argv(env, "mlm", tmp_path / "a", *extra, max_steps=2))
    cache_producer.main(_argv(env, "mlm", tmp_path / "b", *extra, "--producer_batch_size", "12", max_steps=2))
    assert a.targets == "sampled" and a.top_k == 16
    x, y = TeacherCache.open(tmp_path / "a"), TeacherCache.open(tmp_path / "b")
    teacher = transformers.BertForMaskedLM.from_pretrained(str(_teacher(env, "mlm"))).eval()
    m, d, args = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments),
                            _argv(env, "mlm", tmp_path / "unused", max_steps=2))
    distinct = 0
    for step, batches in training_batches(build_trainer(m, d, args), 2):
        for mb, batch in enumerate(batches):
            with torch.no_grad():
                logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits[batch["labels"] != -100]
            t_logp = teacher_log_probs([logits], 2.0)
            got = x.targets(step, mb)
            assert got.ids.shape == (t_logp.shape[0], 16) and torch.isnan(got.log_rest).all()
            torch.testing.assert_close(got.logp, t_logp.gather(-1, got.ids.long()))
            distinct += int((got.ids != got.ids[:, :1]).any(-1).sum())
            if step == 0 and mb == 0:  # the first group starts at the same item whatever the producer batch
                assert torch.equal(got.ids, y.targets(step, mb).ids)
    assert distinct > 0  # draws, not one repeated token
    # Resumed after losing the second of two shards: the redrawn shard equals the uninterrupted one (draws are seeded
    # by their address, not by whatever the process drew before).
    argv = _argv(env, "mlm", tmp_path / "c", *extra, "--steps_per_shard", "1", max_steps=2)
    full = cache_producer.main(argv)
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / full.shards[1].name).unlink()
    resumed = cache_producer.main(argv)
    assert [e.sha256 for e in resumed.shards] == [e.sha256 for e in full.shards]
