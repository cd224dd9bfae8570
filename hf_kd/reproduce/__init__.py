"""``hf-kd reproduce``: the paper's protocol in miniature (and the real-scale plan), built on the tasks.

Task-independent: ``protocol`` (variants, jobs, typed records, the ``TaskBackend`` interface), ``run`` (one
protocol run: plan, calibrate, train, report), ``jobs`` (resumable, parallel trainings keyed by what shapes them),
``calibrate`` (per-step costs measured interleaved: the calibrated cost axis), ``table`` (per-seed speed-ups and
their spreads as typed rows), ``report`` (markdown, plots, ``--rerender``; the uncertainty rule is
``hf_kd.core.uncertainty``), ``findings`` (the paper's claims), ``study`` (the regime
study), ``presets`` (one preset type per task, ``--override``). Task back ends: ``text`` (+ ``corpus``: MLM and
causal LM through ``hf_kd.text.pretrain``) and ``vision``. ``cli`` (arguments, dispatch: the only module that
picks a back end) and ``scale`` (the real-scale commands, resumable ``--launch``). ``hf_kd/cli.py`` is the entry
point.

May import: ``hf_kd.core``, ``hf_kd.text``, ``hf_kd.vision`` and ``hf_kd.reproduce``; the task-independent
modules import no task back end (tests/test_layering.py).
"""
