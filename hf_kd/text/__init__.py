"""The text task: MLM and causal-LM pretraining with KD on the Hugging Face ``Trainer``.

Holds ``DistillationTrainer`` (``trainer``; its objectives in ``objective``, ``mlm_objective``, ``clm_objective``,
the teacher side in ``teacher_targets``, task detection in ``task``, loss rows in ``rows``, causal-LM positions and
hidden-state capture in ``clm``) and its arguments (``config``, ``script_args``), the sparse MLM head (``sparse_head``), data loading
and the built-in corpus with resumable masking (``data``, ``corpus``), student presets (``models``) and the
pretraining factory behind ``run_mlm_kd.py``, ``run_clm_kd.py`` and ``hf-kd reproduce`` (``pretrain``) and its
model card (``card``).

May import: ``hf_kd.core`` and ``hf_kd.text``. Never ``hf_kd.vision`` or ``hf_kd.reproduce``.
"""
