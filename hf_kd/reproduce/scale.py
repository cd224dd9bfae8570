"""``hf-kd reproduce --preset bert-base-c4``: the real-scale protocol as commands (printed, or run with --launch).

BERT-base students on streamed C4 (``allenai/c4``, ``en``), 8 GPUs with DeepSpeed ZeRO-2, checkpoints every
10k steps, then a GLUE sweep of every checkpoint and the speed-up report. The teacher is a recycled
checkpoint (``bert-base-uncased``; its cost is sunk, as in the paper). Needs the Hub and GPUs.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

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


def bert_base_c4(output_dir: str, launch: bool = False) -> dict:
    """Print (or run) the real-scale protocol; returns a results-like dict for the CLI."""
    cmds = commands(output_dir)
    md = "# bert-base-c4 protocol (run these on 8 GPUs with Hub access)\n\n" + "\n".join(f"    {c}" for c in cmds)
    if launch:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for c in cmds:
            logger.info("running: %s", c)
            subprocess.run(shlex.split(c), check=True)
    return {"markdown": md, "plots": [], "commands": cmds}
