"""``--report_to``: check that each named tracker's package is installed, before any model or data is set up.

Without this, a missing package surfaces only when the Trainer (or Accelerate) builds its callbacks, after the
model, tokenizer and data are ready (``hf-kd reproduce``: after its teachers trained), as a long traceback whose
advice ("update your PyTorch version or install tensorboardX") names no package of ours.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from .errors import UserError

# tracker name (transformers' / Accelerate's --report_to value) -> (modules any one of which suffices, what to install)
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), 'pip install "hf-kd[tensorboard]"'),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "clearml": (("clearml",), "pip install clearml"),
    "neptune": (("neptune",), "pip install neptune"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "aim": (("aim",), "pip install aim"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "trackio": (("trackio",), "pip install trackio"),
}
NO_TRACKER = ("none", "all", "")  # "all" = whatever is installed: nothing can be missing


def _names(report_to: str | Iterable[str] | None) -> list[str]:
    if report_to is None:
        return []
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    return [n.strip() for item in items for n in str(item).split(",") if n.strip() not in NO_TRACKER]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_trackers(report_to: str | Iterable[str] | None) -> None:
    """Raise one :class:`UserError` line naming the package to install for the first missing tracker."""
    for name in _names(report_to):
        if name not in TRACKER_PACKAGES:
            continue  # a tracker we do not know: transformers/Accelerate validate the name themselves
        modules, install = TRACKER_PACKAGES[name]
        if not any(_installed(m) for m in modules):
            raise UserError(f"--report_to {name} needs the {modules[0]} package, which is not installed; run "
                            f"`{install}`, or pass --report_to none")
