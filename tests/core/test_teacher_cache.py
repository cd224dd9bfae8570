"""The teacher-output cache format: addressing by (step, micro-batch, rank), one-line refusals of a cache made
for another run (every compared manifest field) and of a truncated, altered or missing shard."""

import dataclasses

import pytest
import torch

from hf_kd.core.cache_format import MANIFEST, MATCH_FIELDS, Manifest, TeacherCacheError, publish_bytes, write_shard
from hf_kd.core.cli_utils import is_user_error
from hf_kd.core.errors import UserError
from hf_kd.core.sparse_kd import SparseTargets
from hf_kd.core.teacher_cache import TeacherCache


def _manifest(**kw) -> Manifest:
    base = dict(task="mlm", teacher_fingerprints=["t" * 8], teacher_selection="mean", tokenizer_hash="tok",
                data_hash="data", seed=1, data_seed=None, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                world_size=2, block_size=32, kd_positions="masked", mlm_probability=0.15, temperature=1.0, top_k=4,
                vocab_size=50, steps=5, steps_per_shard=2)
    base.update(kw)
    return Manifest(**base)


def _targets(step, mb, rank, k=4):
    rows = 1 + (step + mb + rank) % 3  # a distinct row count per address
    value = float(step * 100 + mb * 10 + rank)
    return SparseTargets(ids=torch.full((rows, k), step + mb + rank, dtype=torch.int32),
                         logp=torch.full((rows, k), -value / 1000), log_rest=torch.full((rows,), -value))


def _write_cache(folder, manifest=None):
    """What two producing ranks and the main process would write."""
    m = manifest or _manifest()
    folder.mkdir(exist_ok=True)
    shards = []
    for rank in range(m.world_size):
        for index in range(-(-m.steps // m.steps_per_shard)):
            steps = range(index * m.steps_per_shard, min((index + 1) * m.steps_per_shard, m.steps))
            targets = {(s, mb): _targets(s, mb, rank) for s in steps for mb in range(m.gradient_accumulation_steps)}
            shards.append(write_shard(folder, rank, index, steps[0], steps[-1] + 1, targets, m.logp_dtype))
    m = dataclasses.replace(m, shards=shards)
    publish_bytes(folder / MANIFEST, m.to_json().encode())
    return m


def test_each_rank_and_micro_batch_reads_its_own_targets(tmp_path):
    m = _write_cache(tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").glob("shard-*"))
    assert names[0] == "shard-00000-000000.safetensors" and len(names) == 6  # 2 ranks x 3 shards, disjoint
    cache = TeacherCache.open(tmp_path / "c")
    cache.verify()
    for rank in range(2):
        for step in range(m.steps):
            for mb in range(2):
                got, want = cache.targets(step, mb, rank), _targets(step, mb, rank)
                assert torch.equal(got.ids, want.ids) and torch.equal(got.log_rest, want.log_rest)
                torch.testing.assert_close(got.logp.float(), want.logp, atol=1e-4, rtol=1e-3)
                assert got.logp.dtype == torch.float16
    with pytest.raises(TeacherCacheError, match="outside the teacher cache's steps 0..4"):
        cache.targets(5, 0, 0)
    with pytest.raises(TeacherCacheError, match="no micro-batch 2 of step 0"):
        cache.targets(0, 2, 0)


OTHER_VALUES = {"format_version": 1, "task": "clm", "teacher_fingerprints": ["u" * 8], "teacher_selection": "sample",
                "tokenizer_hash": "tok2", "data_hash": "data2", "seed": 2, "data_seed": 5,
                "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "world_size": 1, "block_size": 64, "max_train_samples": 100,
                "kd_positions": "all", "mlm_probability": 0.3, "temperature": 2.0, "vocab_size": 51}


def test_every_stream_and_target_field_is_compared():
    assert set(MATCH_FIELDS) == set(OTHER_VALUES)


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_a_cache_for_another_run_is_refused_naming_the_field_and_both_values(tmp_path, name):
    _write_cache(tmp_path / "c")
    cache = TeacherCache.open(tmp_path / "c")
    cache.check_matches(_manifest())  # the same run: accepted
    other = OTHER_VALUES[name] if name != "format_version" else 2
    with pytest.raises(TeacherCacheError) as e:
        cache.check_matches(_manifest(**{name: other}))
    msg = str(e.value)
    assert "\n" not in msg and f"cache's {name} is" in msg and repr(other) in msg
    assert repr(getattr(_manifest(), name)) in msg
    assert is_user_error(e.value) and isinstance(e.value, UserError)  # exit 2 through run_cli


def test_a_cache_covering_too_few_steps_is_refused(tmp_path):
    _write_cache(tmp_path / "c")
    cache = TeacherCache.open(tmp_path / "c")
    cache.check_matches(_manifest(), kd_stop_step=5)
    with pytest.raises(TeacherCacheError, match=r"covers steps 0..4 \(steps=5\).*kd stop step 6"):
        cache.check_matches(_manifest(), kd_stop_step=6)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "unlisted"])
def test_a_damaged_shard_is_refused_never_read_as_zeros(tmp_path, damage):
    m = _write_cache(tmp_path / "c")
    shard = tmp_path / "c" / m.shards[1].name  # rank 0, steps 2-3
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[:-16])
    elif damage == "flip":
        shard.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "delete":
        shard.unlink()
    else:
        publish_bytes(tmp_path / "c" / MANIFEST,
                      dataclasses.replace(m, shards=[e for e in m.shards if e.name != shard.name]).to_json().encode())
    cache = TeacherCache.open(tmp_path / "c")
    assert torch.equal(cache.targets(0, 0, 0).ids, _targets(0, 0, 0).ids)  # other shards still read
    for read in (lambda: cache.targets(2, 0, 0), cache.verify):
        with pytest.raises(TeacherCacheError) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and (shard.name in msg or "no shard for rank 0, steps from 2" in msg)
        assert {"truncate": "truncated", "flip": "sha256", "delete": "cannot be read",
                "unlisted": "no shard"}[damage] in msg


def test_missing_or_broken_manifest_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "progress-00000.json").write_text("{}")
    with pytest.raises(TeacherCacheError, match="has no manifest.json .production unfinished"):
        TeacherCache.open(tmp_path / "c")
    (tmp_path / "c" / MANIFEST).write_text('{"task": "mlm"}')
    with pytest.raises(TeacherCacheError, match="not a valid manifest"):
        TeacherCache.open(tmp_path / "c")


def test_manifest_round_trips_through_json():
    original = _manifest(device_type="cpu", device_hours=0.5)
    assert Manifest.from_json(original.to_json()) == original
