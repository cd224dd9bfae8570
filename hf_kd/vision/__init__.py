"""The vision task: torchvision classifiers distilled under Accelerate on the shared KD core.

Holds the data (``data``: ImageFolder or the offline digits), the models, arguments and optimiser
(``setup``), the training loop (``loop``: ``prepare``, ``backward``, ``gather_for_metrics``, ``save_state``),
its checkpoints (``checkpoints``), progress bar and log lines (``progress``) and model card (``card``).

Public API (imported lazily, so ``import hf_kd.vision`` stays cheap)::

    from hf_kd.vision import (VisionDataArguments, VisionModelArguments, VisionTrainingArguments,
                              run_vision_training)

May import: ``hf_kd.core`` and ``hf_kd.vision``. Never ``hf_kd.text`` or ``hf_kd.reproduce``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VisionDataArguments": "data",
    "VisionModelArguments": "setup",
    "VisionTrainingArguments": "setup",
    "run_vision_training": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
