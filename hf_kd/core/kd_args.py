"""The ``kd_*`` flags: one definition (default, help) and one validation, shared by every task's arguments.

A task's argument dataclass declares ``kd_alpha: float = kd_field("kd_alpha")`` and calls
:func:`validate_kd_fields` in ``__post_init__``, so a flag means the same thing for text and vision.
"""

from __future__ import annotations

from dataclasses import field

from .losses import DIVERGENCES
from .schedule import TEACHER_SELECTIONS, stop_step_from_ratio

KD_FIELDS: dict[str, tuple[object, str]] = {
    "kd_alpha": (0.9, "Weight of the KD term in [0, 1]; the hard-label (MLM) loss gets 1 - kd_alpha. 0.9 is what "
                 "the paper's released code used; hf-kd reproduce's measured runs use 0.5 with temperature 1 "
                 "(docs/reproduce_builtin.md)."),
    "kd_temperature": (4.0, "Softmax temperature T > 0 for teacher and student; the KD term is multiplied by T^2 "
                       "(Hinton et al. 2015) so its gradient scale does not shrink with T. 4.0 as in the paper's code."),
    "kd_stop_ratio": (None, "Stop KD after this fraction of the optimizer steps, in (0, 1]; stop = ceil(ratio * "
                      "max_steps). The paper found KD for the first 20 to 50 percent best for BERT. Unset = KD "
                      "throughout."),
    "kd_stop_steps": (None, "Stop KD at this absolute optimizer step (>= 0); wins over kd_stop_ratio, like "
                      "warmup_steps over warmup_ratio. Beyond max_steps means KD throughout (a warning says so)."),
    "kd_teacher_selection": ("mean", "With several teachers: 'mean' = target is the mean of their softened "
                             "distributions (n teacher forwards per step); 'sample' = one teacher per optimizer "
                             "step, a pure function of (seed, step), so every rank and every resume agrees (1 "
                             "forward per step; the paper's O(1) trick)."),
    "kd_divergence": ("forward_kl", "'forward_kl' = KL(teacher || student), the Hinton form; 'reverse_kl' = "
                      "KL(student || teacher), the argument order of the paper's released code."),
}


# Flags with a fixed set of values: argparse lists them in --help and rejects anything else.
KD_CHOICES: dict[str, tuple[str, ...]] = {"kd_teacher_selection": TEACHER_SELECTIONS, "kd_divergence": DIVERGENCES}


def kd_field(name: str, help: str | None = None):
    """A dataclass field for the ``kd_*`` flag ``name`` with its shared default, help and allowed values."""
    default, text = KD_FIELDS[name]
    # argparse %-formats help strings: a literal "%" (e.g. "20-50%") must be doubled or --help crashes.
    text = (help or text).replace("%%", "%").replace("%", "%%")
    metadata = {"help": text}
    if name in KD_CHOICES:
        metadata["choices"] = KD_CHOICES[name]
    return field(default=default, metadata=metadata)


def bad_value(name: str, value, expected: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: expected {expected}")


def validate_kd_fields(args, max_steps: int | None = None) -> None:
    """Checks of the ``kd_*`` fields shared by the text and vision arguments (one meaning of each flag).

    ``max_steps`` (when known) lets the two stop forms be compared: both set and disagreeing is an error.
    """
    if not 0.0 <= args.kd_alpha <= 1.0:
        raise bad_value("kd_alpha", args.kd_alpha, "a number in [0, 1]")
    if not args.kd_temperature > 0:
        raise bad_value("kd_temperature", args.kd_temperature, "a number > 0")
    if args.kd_stop_ratio is not None and not 0.0 < args.kd_stop_ratio <= 1.0:
        raise bad_value("kd_stop_ratio", args.kd_stop_ratio, "a fraction in (0, 1]")
    if args.kd_stop_steps is not None and args.kd_stop_steps < 0:
        raise bad_value("kd_stop_steps", args.kd_stop_steps, "an integer >= 0")
    if args.kd_stop_steps is not None and args.kd_stop_ratio is not None and max_steps:
        from_ratio = stop_step_from_ratio(args.kd_stop_ratio, max_steps)
        if args.kd_stop_steps != from_ratio:
            raise ValueError(f"kd_stop_steps={args.kd_stop_steps} and kd_stop_ratio={args.kd_stop_ratio} disagree for "
                             f"max_steps={max_steps} (ratio gives step {from_ratio}); set only one of them")
    for name, allowed in (("kd_teacher_selection", TEACHER_SELECTIONS), ("kd_divergence", DIVERGENCES)):
        if getattr(args, name) not in allowed:
            raise bad_value(name, getattr(args, name), f"one of {allowed}")
