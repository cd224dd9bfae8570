"""Scale-out: 2-process DDP / DeepSpeed ZeRO-2 / ZeRO-3 runs (gloo, CPU) against a 1-process run.

Each launched run (``tests/support/dist_worker.py``) trains a tiny student for 4 steps with KD from 2 teachers
(one built in code, one loaded by path; "sample" selection) for the first 2 steps, global batch 4 = 2 ranks x 2. Every rank dumps its
``teacher_calls`` and ``log_history``; we check the loss trajectory matches the single-process run with the
same global batch, the teachers ran on every rank on exactly the KD steps, and the ranks agreed on the
teacher at every step. The fast tests below check configs and teacher placement without launching anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.support import REPO
from tests.support.models import tiny_bert

WORKER = REPO / "tests" / "support" / "dist_worker.py"
KD_STOP, MAX_STEPS = 2, 4
RUN = ["--teachers", "2", "--selection", "sample", "--global_batch", "4", "--max_steps", str(MAX_STEPS),
       "--kd_stop", str(KD_STOP)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HF_KD_DEBUG", None)
    return env


def _launch(engine: str, out: Path, nproc: int, teacher_dir: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER)]
    else:  # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER)]
    args = ["--engine", engine, "--out", str(out), "--path_teacher", str(teacher_dir)] + RUN + list(extra)
    proc = subprocess.run(cmd + args, env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{engine} x{nproc} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _train_lines(result: dict) -> list[dict]:
    return [e for e in result["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """The second teacher, saved: loaded by path in each run (partitioned at load time under ZeRO-3)."""
    folder = tmp_path_factory.mktemp("teacher")
    tiny_bert(seed=2, layers=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, teacher_dir) -> dict:
    return _launch("single", tmp_path_factory.mktemp("single"), 1, teacher_dir)[0]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_processes_match_one(tmp_path, single_process, teacher_dir, engine):
    ranks = _launch(engine, tmp_path, 2, teacher_dir)
    expected_engine = {"ddp": "ddp", "zero2": "deepspeed-zero2", "zero3": "deepspeed-zero3"}[engine]
    ref_lines = _train_lines(single_process)
    assert len(ref_lines) == MAX_STEPS
    for r in ranks:
        assert (r["engine"], r["num_processes"], r["world_size"]) == (expected_engine, 2, 2)
        # the loss trajectory (and its two terms) equals the 1-process run with the same global batch
        lines = _train_lines(r)
        for key in ("loss", "mlm_loss", "kd_loss", "kd_weight"):
            got = [e.get(key, -1.0) for e in lines]  # kd_loss is absent after the cutoff
            want = [e.get(key, -1.0) for e in ref_lines]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (key, got, want)
        # the cutoff is reached on the same step on every rank: teachers ran on exactly the KD steps
        assert r["kd_stop_step"] == KD_STOP
        assert sorted({step for step, _ in r["teacher_calls"]}) == list(range(KD_STOP))
        assert len(r["teacher_calls"]) == KD_STOP  # "sample": one teacher forward per step (GA 1)
        assert sum(r["teacher_forwards"]) == KD_STOP
        assert r["teacher_calls"] == single_process["teacher_calls"]
        # freed at the KD stop: the trainer holds no teacher, and no teacher object lives on (under ZeRO-3 neither
        # the teacher engines nor their modules, which DeepSpeed's module-level forward stack would otherwise keep)
        assert r["teachers_left"] == 0
        assert r["teacher_objects_alive"] == 0
        if engine == "zero3":  # each rank holds about half of each teacher
            assert r["teacher_types"] == ["DeepSpeedEngine"] * 2
            assert all(share <= 0.75 for share in r["teacher_partition_share"]), r["teacher_partition_share"]
        else:
            assert r["teacher_types"] == ["BertForMaskedLM"] * 2
            assert r["teacher_partition_share"] == [1.0, 1.0]
    # both ranks used the same teacher at every step, and both teachers were used
    assert ranks[0]["teacher_calls"] == ranks[1]["teacher_calls"]
    assert ranks[0]["teacher_forwards"] == ranks[1]["teacher_forwards"]
    assert {i for _, i in ranks[0]["teacher_calls"]} == {0, 1}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_causal_lm_two_processes_with_ga_match_one(tmp_path, engine):
    """Causal LM (GPT-2 student; GPT-2 + Llama-by-path teachers): 2 ranks x GA 2 x batch 1 == 1 process x batch 4.

    DDP runs the chunked loss through the DDP wrapper; ZeRO-3 falls back to full logits (sharded head weights)."""
    from tests.support.models import tiny_llama

    tiny_llama(seed=2).save_pretrained(tmp_path / "llama")
    clm = ("--task", "clm")
    ref = _train_lines(_launch("single", tmp_path / "one", 1, tmp_path / "llama", clm)[0])
    ranks = _launch(engine, tmp_path / "two", 2, tmp_path / "llama", clm + ("--ga", "2"))
    assert len(ref) == MAX_STEPS
    for r in ranks:
        lines = _train_lines(r)
        for key in ("loss", "clm_loss", "kd_loss", "kd_weight"):
            got, want = [e.get(key, -1.0) for e in lines], [e.get(key, -1.0) for e in ref]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (key, got, want)
        assert sorted({step for step, _ in r["teacher_calls"]}) == list(range(KD_STOP))
        assert r["teachers_left"] == 0 and r["teacher_objects_alive"] == 0  # freed at the stop, engines too


# -- fast checks: shipped configs and teacher placement -------------------------------------------------------
DS_CONFIGS = {"zero1.json": 1, "zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}


@pytest.mark.parametrize("name,stage", DS_CONFIGS.items())
def test_deepspeed_configs_leave_trainer_values_auto(name, stage):
    config = json.loads((REPO / "ds_configs" / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert config["bf16"]["enabled"] == "auto"
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key
    assert set(config["optimizer"]["params"].values()) == {"auto"}
    assert set(config["scheduler"]["params"].values()) == {"auto"}
    if name == "zero3_offload.json":
        assert config["zero_optimization"]["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("name,machines,processes", [("accelerate_1node_8gpu.yaml", 1, 8),
                                                     ("accelerate_2node_8gpu.yaml", 2, 16)])
def test_accelerate_configs_parse(name, machines, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "ds_configs" / name))
    assert (config.num_machines, config.num_processes) == (machines, processes)
    assert str(config.distributed_type).endswith("DEEPSPEED")
    assert (REPO / config.deepspeed_config["deepspeed_config_file"]).is_file()


def test_teacher_zero3_config_has_no_optimizer_or_auto():
    from hf_kd.core.distributed import teacher_zero3_config

    student = json.loads((REPO / "ds_configs" / "zero3_offload.json").read_text())
    student.update(train_batch_size=8, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1)
    config = teacher_zero3_config(student, hidden_size=32, dtype=torch.bfloat16)
    assert "optimizer" not in config and "scheduler" not in config and "auto" not in json.dumps(config)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and "offload_optimizer" not in zero and zero["offload_param"]["device"] == "cpu"
    assert zero["reduce_bucket_size"] == 32 * 32 and zero["stage3_param_persistence_threshold"] == 320
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["train_batch_size"] == 8
    assert teacher_zero3_config(student, None, None)["bf16"] == {"enabled": False}


@pytest.mark.parametrize("distributed_type,processes,name", [("FSDP", 2, "fsdp"), ("MULTI_CPU", 2, "ddp"),
                                                             ("NO", 1, "single")])
def test_non_zero3_engines_replicate_the_teacher(distributed_type, processes, name):
    from accelerate.utils import DistributedType

    from hf_kd.core.distributed import engine_name, prepare_teachers

    accelerator = SimpleNamespace(distributed_type=getattr(DistributedType, distributed_type),
                                  num_processes=processes, state=SimpleNamespace())
    teacher = tiny_bert(seed=1, layers=1)
    assert engine_name(accelerator) == name
    out = prepare_teachers([teacher], accelerator, SimpleNamespace(device=torch.device("cpu")), torch.bfloat16)
    assert out == [teacher]  # the module itself: not wrapped
    assert next(teacher.parameters()).dtype == torch.bfloat16
