"""Image classification with knowledge distillation (hf-kd, vision half): ResNet on ImageNet or, offline, digits.

Offline on a CPU (scikit-learn digits; a baseline, then a student distilling from it for the first half):

    python run_scripts/run_resnet_kd.py --model resnet18 --output_dir runs/digits_base
    python run_scripts/run_resnet_kd.py --model resnet18 --output_dir runs/digits_kd \
        --teacher_checkpoint runs/digits_base --kd_stop_ratio 0.5

ImageNet on 8 GPUs (ResNet-50 student, ResNet-101 teacher, KD for the first half; see docs/vision.md):

    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 run_scripts/run_resnet_kd.py \
        --train_dir /data/imagenet/train --val_dir /data/imagenet/val --model resnet50 \
        --teacher_model resnet101 --teacher_checkpoint /ckpt/resnet101.safetensors \
        --kd_alpha 0.5 --kd_temperature 4 --kd_stop_ratio 0.5 --epochs 90 --per_device_train_batch_size 32 \
        --learning_rate 0.1 --checkpointing_steps 5000 --output_dir runs/r50_kd

A run shows a progress bar and a log line every ``--logging_steps``; it writes ``metrics.jsonl``, verified
``checkpoint-<step>/`` folders (``--save_total_limit`` keeps the newest N; ``--resume_from_checkpoint latest``),
``model.safetensors`` + ``config.json`` and a model card ``README.md``; ``--push_to_hub --hub_model_id user/name``
uploads that folder. Arguments can also come from one JSON file: ``python run_scripts/run_resnet_kd.py args.json``.
"""

from __future__ import annotations

import sys

from hf_kd.core.cli_utils import parse_args, run_cli
from hf_kd.vision.data import VisionDataArguments
from hf_kd.vision.loop import run_vision_training
from hf_kd.vision.setup import VisionModelArguments, VisionTrainingArguments


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(
        (VisionModelArguments, VisionDataArguments, VisionTrainingArguments), argv)
    return run_vision_training(model_args, data_args, training_args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
