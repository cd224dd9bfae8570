"""``hf-kd reproduce``: the paper's protocol in miniature (and the real-scale plan), built on the tasks.

``cli`` (arguments, dispatch), ``presets`` (tiny, gpu-small, ``--override``), ``text`` (the MLM protocol),
``clm`` (the causal-LM model, collator and regime line that ``text`` switches to for ``--task clm``), ``vision`` (the same
with the ResNet loop), ``jobs`` (resumable, parallel trainings), ``calibrate`` (per-step
costs measured interleaved: the calibrated cost axis), ``report`` (speed-ups, table, plots; the
uncertainty rule is ``hf_kd.core.uncertainty``), ``findings`` (the paper's claims), ``scale`` (the real-scale commands, resumable ``--launch``).
``hf_kd/cli.py`` is the entry point.

May import: ``hf_kd.core``, ``hf_kd.text``, ``hf_kd.vision`` and ``hf_kd.reproduce``.
"""
