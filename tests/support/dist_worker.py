"""One rank of a tiny KD run, launched by ``tests/text/test_distributed.py`` (torchrun) or called in-process.

    torchrun --nproc_per_node 2 tests/support/dist_worker.py --engine zero3 --out DIR --teachers 2 --selection sample

Writes ``DIR/rank<r>.json``: the engine accelerate reported, ``trainer.teacher_calls``, ``log_history``, the
KD stop step and the global step at which each rank last called a teacher. Same data, tiny models and
deterministic, dropout-free setup as ``tests/text/test_trainer.py``; the global batch is ``--global_batch`` split
over the ranks, with a sequential sampler so every split sees the same examples at every step.

DeepSpeed on a CPU-only machine (the shim, confined to tests): transformers' ``TrainingArguments`` builds
accelerate's ``PartialState`` with ``use_deepspeed`` but *without* a backend; on a machine without CUDA
accelerate then picks no backend and reports ``num_processes == 1`` (``state.py``: ``backend is None`` ->
``num_processes = 1``) even though DeepSpeed itself initialised a 2-rank gloo group -- so DeepSpeed's
batch check fails (``train_batch_size 4 != 4 * 1 * 2``). ``use_cpu`` cannot help: it turns DeepSpeed off.
So the worker builds the state first, with the gloo backend and ``ACCELERATE_USE_DEEPSPEED`` set, and the
Trainer adopts it through the documented ``accelerator_config={"use_configured_state": True}``.
On GPUs none of this is needed (accelerate picks nccl itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import weakref
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # launched as a script by torchrun
    sys.path.insert(0, str(REPO))

from transformers import TrainerCallback  # noqa: E402

from tests.support.data import ForwardCounter, ListDataset, clm_examples, mlm_examples  # noqa: E402
from tests.support.models import tiny_bert, tiny_gpt2  # noqa: E402

ENGINES = ("single", "ddp", "zero2", "zero3")


def deepspeed_config(engine: str) -> dict:
    """The shipped ``ds_configs/zero<N>.json`` without optimizer/scheduler, so the Trainer's SGD runs."""
    config = json.loads((REPO / "ds_configs" / f"{engine}.json").read_text())
    config.pop("optimizer")
    config.pop("scheduler")
    return config


def configure_cpu_deepspeed_state() -> None:
    """Build accelerate's state for DeepSpeed over gloo on CPU (see the module docstring for why)."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState(backend="gloo")
    assert state.num_processes == int(os.environ.get("WORLD_SIZE", 1)), state



def build_trainer(engine: str, out: Path, world_size: int, teachers: int = 1, selection: str = "mean",
                  global_batch: int = 4, max_steps: int = 4, kd_stop: int = 2, path_teacher: Path | None = None,
                  task: str = "mlm", ga: int = 1, **overrides):
    from transformers import default_data_collator

    from hf_kd import DistillationTrainer, DistillationTrainingArguments

    kw = dict(output_dir=str(out / "run"), max_steps=max_steps, gradient_accumulation_steps=ga,
              per_device_train_batch_size=global_batch // (world_size * ga),
              learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
              max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=0,
              disable_tqdm=True, dataloader_num_workers=0, train_sampling_strategy="sequential",
              kd_alpha=0.5, kd_temperature=2.0, kd_stop_steps=kd_stop, kd_teacher_selection=selection)
    if engine in ("zero2", "zero3"):
        configure_cpu_deepspeed_state()
        kw.update(deepspeed=deepspeed_config(engine), accelerator_config={"use_configured_state": True})
    else:
        kw.update(use_cpu=True, ddp_backend="gloo" if world_size > 1 else None)
    kw.update(overrides)
    args = DistillationTrainingArguments(**kw)
    # A teacher given by path is loaded inside the trainer, after the DeepSpeed config exists: under ZeRO-3
    # from_pretrained then builds it partitioned (deepspeed.zero.Init) -- the path real runs take.
    # task "clm": a GPT-2 student, GPT-2 and (by path) Llama teachers, next-token data with padding and prompts.
    make_teacher, make_student, examples = ((lambda s: tiny_gpt2(seed=s, layers=1)), tiny_gpt2, clm_examples) \
        if task == "clm" else ((lambda s: tiny_bert(seed=s, layers=1)), tiny_bert, mlm_examples)
    specs = [make_teacher(s) for s in range(1, teachers + 1)]
    if path_teacher is not None:
        specs[-1] = str(path_teacher)
    trainer = DistillationTrainer(model=make_student(seed=0), teacher_model=specs, args=args,
                                  train_dataset=ListDataset(examples(global_batch * max_steps)),
                                  data_collator=default_data_collator)
    # On the model itself (a DeepSpeed engine's .module): its hooks fire inside the engine's forward too.
    trainer.teacher_forward_counters = [ForwardCounter(getattr(t, "module", t)) for t in trainer.teachers]
    trainer.add_callback(PlacementRecorder(trainer))
    return trainer


class PlacementRecorder(TrainerCallback):
    """How the teachers were placed, read at the first step (they are freed at the KD stop), and what is left of
    them after training (nothing: the trainer holds no teacher module, engine or parameter)."""

    def __init__(self, trainer):
        self.trainer, self.placement = trainer, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.placement is None:
            teachers = self.trainer.teachers
            self.placement = {"teacher_types": [type(t).__name__ for t in teachers],
                              "teacher_partition_share": [partition_share(t) for t in teachers],
                              "teacher_refs": [weakref.ref(t) for t in teachers]
                              + [weakref.ref(getattr(t, "module", t)) for t in teachers]}


def partition_share(teacher: torch.nn.Module) -> float:
    """Share of the teacher's parameters held by this rank (1.0 = replicated; ZeRO-3 keeps ~1/N)."""
    params = list(getattr(teacher, "module", teacher).parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    return held / full


def report(trainer) -> dict:
    """What the tests compare across ranks and against the single-process run."""
    import gc

    from hf_kd.core.distributed import engine_name

    recorder = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PlacementRecorder))
    gc.collect()

    return {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "engine": engine_name(trainer.accelerator),
        "teacher_types": recorder.placement["teacher_types"],
        "kd_stop_step": trainer.kd_stop_step,
        "teacher_calls": trainer.teacher_calls,
        "teacher_forwards": [c.calls for c in trainer.teacher_forward_counters],
        "teacher_partition_share": recorder.placement["teacher_partition_share"],
        "teachers_left": len(trainer.teachers),
        "teacher_objects_alive": sum(ref() is not None for ref in recorder.placement["teacher_refs"]),
        "log_history": trainer.state.log_history,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--teachers", type=int, default=1)
    p.add_argument("--selection", default="mean")
    p.add_argument("--global_batch", type=int, default=4)
    p.add_argument("--max_steps", type=int, default=4)
    p.add_argument("--kd_stop", type=int, default=2)
    p.add_argument("--path_teacher", type=Path, default=None, help="load the last teacher from this folder")
    p.add_argument("--task", choices=("mlm", "clm"), default="mlm")
    p.add_argument("--ga", type=int, default=1, help="gradient accumulation steps")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # two ranks share two cores
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    trainer = build_trainer(a.engine, a.out, world_size, a.teachers, a.selection, a.global_batch, a.max_steps,
                            a.kd_stop, a.path_teacher, a.task, a.ga)
    trainer.train()
    result = report(trainer)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"rank{result['rank']}.json").write_text(json.dumps(result, indent=1))
    exit_cleanly()


def exit_cleanly() -> None:
    """End a test rank once its results are on disk, skipping the interpreter's teardown.

    Ranks of these CPU/gloo runs were seen to abort at interpreter exit ("terminate called without an active
    exception", SIGABRT) after writing their results, also after destroy_process_group(): a C++ thread object
    destroyed while still joinable during shutdown. The barrier makes sure every rank is done; os._exit then
    ends the process without running those destructors (what the test checks is already written and flushed).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

if __name__ == "__main__":
    main()
