"""MLM pretraining of a BERT-style student with knowledge distillation (hf-kd).

Offline, on the built-in corpus (a teacher run, then a student distilling from it):

    python run_scripts/run_mlm_kd.py --output_dir runs/teacher --max_steps 2000
    python run_scripts/run_mlm_kd.py --output_dir runs/kd --max_steps 1000 \
        --teacher_model_name_or_path runs/teacher --kd_alpha 0.5 --kd_temperature 1 --kd_stop_ratio 0.5

Real scale (8 GPUs, BERT-base on C4 streamed from the Hub, KD for the first half, DeepSpeed ZeRO-2):

    accelerate launch --num_processes 8 run_scripts/run_mlm_kd.py \
        --dataset_name allenai/c4 --dataset_config_name en --streaming --model_preset base \
        --tokenizer_name bert-base-uncased --teacher_model_name_or_path bert-base-uncased \
        --max_steps 100000 --per_device_train_batch_size 32 --learning_rate 5e-4 --warmup_steps 0.06 \
        --kd_alpha 0.5 --kd_temperature 1 --kd_stop_ratio 0.5 --bf16 --deepspeed ds_configs/zero2.json \
        --save_steps 10000 --eval_strategy steps --eval_steps 10000 --max_eval_samples 4096 \
        --output_dir runs/bert-base-kd

Arguments can also come from a YAML or JSON file, with flags overriding it:
``python run_scripts/run_mlm_kd.py --config args.yaml --learning_rate 1e-3``.
Definitions (objective, stop step, cost keys, files written): docs/design.md.
"""

from __future__ import annotations

import sys

from hf_kd.core.cli_utils import given_flags, parse_args, run_cli
from hf_kd.text.config import DistillationTrainingArguments
from hf_kd.text.preset_recipe import apply_preset_recipe
from hf_kd.text.pretrain import run_pretraining
from hf_kd.text.script_args import DataArguments, ModelArguments


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, DistillationTrainingArguments), argv)
    apply_preset_recipe(model_args, training_args, given_flags(argv))  # a from-scratch preset brings its lr/warm-up
    return run_pretraining(model_args, data_args, training_args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
