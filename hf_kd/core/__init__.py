"""The KD core, shared by every task: it exists once and imports no task.

Holds the KD objective (``losses``), the cutoff and per-step teacher choice (``schedule``), the ``kd_*`` flags
(``kd_args``), teacher loading/freezing/placement (``teachers``, ``distributed``), cost accounting (``cost``,
``callbacks``), quality curves and speed-ups (``curves``), atomic checkpoints (``checkpointing``), the Hub
settings and upload (``hub``; each task writes its own model card), shared error types (``errors``) and CLI
plumbing (``cli_utils``).

May import: ``hf_kd.core`` only (plus third-party packages). Never ``hf_kd.text``, ``hf_kd.vision``,
``hf_kd.reproduce``, ``run_scripts`` or ``glue_eval`` (``tests/test_layering.py`` enforces it).
"""
