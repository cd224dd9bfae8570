"""``hf-kd reproduce``: the paper's protocol in miniature (and the real-scale plan), built on the tasks.

Holds the text protocol (``text``), the vision protocol (``vision``), the printed/launched real-scale plan
(``scale``) and the report with verdicts (``report``). ``hf_kd/cli.py`` is the entry point.

May import: ``hf_kd.core``, ``hf_kd.text``, ``hf_kd.vision`` and ``hf_kd.reproduce``.
"""
