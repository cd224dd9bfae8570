"""Causal-LM (GPT / Llama-style) pretraining with knowledge distillation (hf-kd).

Flag names follow transformers' ``run_clm.py``. Offline, on the built-in corpus and tokenizer (a teacher run,
then a student distilling from it for the first half of its steps):

    python run_scripts/run_clm_kd.py --output_dir runs/clm-teacher --model_preset mini --max_steps 400
    python run_scripts/run_clm_kd.py --output_dir runs/clm-kd --model_preset tiny --max_steps 200 \
        --teacher_model_name_or_path runs/clm-teacher --kd_alpha 0.5 --kd_temperature 1 --kd_stop_ratio 0.5

Real scale (8 GPUs, a Llama-style student from a larger teacher with the same tokenizer, DeepSpeed ZeRO-2):

    accelerate launch --num_processes 8 run_scripts/run_clm_kd.py \
        --dataset_name allenai/c4 --dataset_config_name en --streaming --config_name Qwen/Qwen2.5-0.5B \
        --tokenizer_name Qwen/Qwen2.5-0.5B --teacher_model_name_or_path Qwen/Qwen2.5-1.5B --block_size 1024 \
        --max_steps 100000 --per_device_train_batch_size 16 --learning_rate 6e-4 --warmup_steps 2000 \
        --kd_alpha 0.5 --kd_temperature 1 --kd_stop_ratio 0.5 --bf16 --deepspeed ds_configs/zero2.json \
        --save_steps 10000 --eval_strategy steps --eval_steps 10000 --output_dir runs/qwen-0.5b-kd

Arguments can also come from one JSON file: ``python run_scripts/run_clm_kd.py args.json``.
"""

from __future__ import annotations

import sys

from hf_kd.core.cli_utils import given_flags, parse_args, run_cli
from hf_kd.text.config import DistillationTrainingArguments
from hf_kd.text.preset_recipe import apply_preset_recipe
from hf_kd.text.pretrain import run_pretraining
from hf_kd.text.script_args import ClmDataArguments, ModelArguments


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(
        (ModelArguments, ClmDataArguments, DistillationTrainingArguments), argv)
    apply_preset_recipe(model_args, training_args, given_flags(argv))  # a from-scratch preset brings its lr/warm-up
    return run_pretraining(model_args, data_args, training_args, task="clm")


if __name__ == "__main__":
    sys.exit(run_cli(main))
