"""Error types shared by every task, so that the CLI layer can map them to exit codes without importing a task.

``UserError``/``DataError`` (bad flags or input) exit 2 with one line; ``NonFiniteLossError`` (a diverged run)
exits 1 naming the step and the last intact checkpoint; ``Interrupted`` (Ctrl-C) exits 130 in one line saying how
to resume.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad flag value or input file, reported in one line."""


class DataError(ValueError):
    """Bad data input (missing file, wrong format, empty, too short)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf (``on_nonfinite_loss="stop"``)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says at which step and how to resume (exit status 130, no traceback)."""
