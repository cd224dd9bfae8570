"""GLUE harness for hf-kd: fine-tune pretraining checkpoints on GLUE and report quality vs pretraining cost.

    python -m glue_eval.run_glue --model_name_or_path runs/kd --tasks rte --glue_dir ../shared/data/glue \\
        --output_dir glue/kd
    python -m glue_eval.sweep --runs runs/baseline runs/kd --tasks rte --glue_dir ../shared/data/glue \\
        --results glue/results.jsonl
    python -m glue_eval.report glue/results.jsonl --baseline baseline --output_dir glue/report

Modules: ``tasks`` (task specs, hyperparameter table), ``data`` (Hub / GLUE-download loaders), ``metrics``
(GLUE metrics, GLUE average), ``finetune`` (Trainer fine-tuning), ``results`` (resumable JSONL),
``run_glue`` / ``sweep`` / ``report`` (CLIs), ``quality`` (report inputs), ``testing`` (tiny fixtures).
See ``docs/glue.md``.
"""
