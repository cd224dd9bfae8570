"""``hf-kd reproduce --preset bert-base-c4``: the real-scale protocol as commands (printed, or run with --launch).

BERT-base students on streamed C4 (``allenai/c4``, ``en``), 8 GPUs with DeepSpeed ZeRO-2, checkpoints every
10k steps, then a GLUE sweep of every checkpoint and the speed-up report. The teacher is a recycled
checkpoint (``bert-base-uncased``; its cost is sunk, as in the paper). Needs the Hub and GPUs.

``--launch`` is resumable: rerun the same command after a crash and it continues where it stopped -- a training
whose ``all_results.json`` exists is skipped, one with a complete checkpoint resumes from it
(``--resume_from_checkpoint latest``), one that left only partial output starts over (``--overwrite_output_dir``);
the GLUE sweep skips its finished fine-tunes itself. A failing stage is reported in one line.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from ..core.checkpointing import latest_complete_checkpoint
from ..core.errors import UserError

logger = logging.getLogger(__name__)

STEPS = 100_000
COMMON = ("accelerate launch --config_file ds_configs/accelerate_1node_8gpu.yaml run_scripts/run_mlm_kd.py "
          "--dataset_name allenai/c4 --dataset_config_name en --streaming --model_preset base "
          "--tokenizer_name bert-base-uncased --max_seq_length 128 --per_device_train_batch_size 32 "
          f"--max_steps {STEPS} --learning_rate 5e-4 --warmup_steps 0.06 --weight_decay 0.01 --bf16 "
          "--deepspeed ds_configs/zero2.json --save_steps 10000 --eval_strategy steps --eval_steps 10000 "
          "--max_eval_samples 4096 --logging_steps 100 --report_to tensorboard")
KD = "--teacher_model_name_or_path bert-base-uncased --kd_alpha 0.5 --kd_temperature 1.0"


def commands(out: str) -> list[str]:
    """The protocol, in order: baselines (frontier budgets too), KD variants, GLUE sweep, report."""
    runs = f"{out}/runs"
    cmds = [f"{COMMON} --output_dir {runs}/baseline"]
    for frac in (0.5, 0.75):
        steps = int(STEPS * frac)
        cmds.append(f"{COMMON} --max_steps {steps} --output_dir {runs}/baseline_{frac:g}x")
    cmds += [f"{COMMON} {KD} --output_dir {runs}/kd_full",
             f"{COMMON} {KD} --kd_stop_ratio 0.25 --output_dir {runs}/kd_stop25",
             f"{COMMON} {KD} --kd_stop_ratio 0.5 --output_dir {runs}/kd_stop50"]
    names = ["baseline", "kd_full", "kd_stop25", "kd_stop50", "baseline_0.5x", "baseline_0.75x"]
    run_dirs = " ".join(f"{runs}/{n}" for n in names)
    cmds.append(f"python -m glue_eval.sweep --runs {run_dirs} --tasks all --seeds 0 1 2 "
                f"--results {out}/glue_results.jsonl")
    cmds.append(f"python -m glue_eval.report {out}/glue_results.jsonl --baseline baseline "
                f"--frontier baseline_0.5x baseline_0.75x baseline --output_dir {out}/report")
    return cmds


def output_dir_of(cmd: str) -> Path | None:
    """The ``--output_dir`` of a training command (``None`` for the GLUE and report stages)."""
    parts = shlex.split(cmd)
    if "run_scripts/run_mlm_kd.py" not in parts or "--output_dir" not in parts:
        return None
    return Path(parts[parts.index("--output_dir") + 1])


def resume_plan(cmds: list[str]) -> list[tuple[str, str | None]]:
    """``(status, command to run or None)`` per stage: done (skipped), resume, restart or run."""
    plan = []
    for c in cmds:
        out = output_dir_of(c)
        if out is None or not out.is_dir() or not any(out.iterdir()):
            plan.append(("run", c))
        elif (out / "all_results.json").is_file():
            plan.append(("done", None))
        elif latest_complete_checkpoint(out):
            plan.append(("resume", f"{c} --resume_from_checkpoint latest"))
        else:
            plan.append(("restart", f"{c} --overwrite_output_dir"))
    return plan


def launch(cmds: list[str]) -> None:
    for i, (status, c) in enumerate(resume_plan(cmds), start=1):
        if c is None:
            logger.info("stage %d/%d already finished: skipped", i, len(cmds))
            continue
        logger.info("stage %d/%d (%s): %s", i, len(cmds), status, c)
        rc = subprocess.run(shlex.split(c)).returncode
        if rc != 0:
            what = output_dir_of(c) or " ".join(shlex.split(c)[:3])
            raise UserError(f"stage {i}/{len(cmds)} ({what}) failed with exit status {rc}; fix the cause and rerun "
                            "the same command: finished stages are skipped, the rest resumes")


def bert_base_c4(output_dir: str, launch_it: bool = False) -> dict:
    """Print (or run, resumably) the real-scale protocol; returns a results-like dict for the CLI."""
    cmds = commands(output_dir)
    md = "# bert-base-c4 protocol (run these on 8 GPUs with Hub access)\n\n" + "\n".join(f"    {c}" for c in cmds)
    if launch_it:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        launch(cmds)
    return {"markdown": md, "plots": [], "commands": cmds}
