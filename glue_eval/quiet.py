"""Silence transformers' per-load output (the model's full config, "loading weights file ...", the LOAD REPORT
table) while the sweep plans and runs its fine-tunes: each load prints ~60 lines at INFO (1,487 stderr lines for
18 fine-tunes), burying the sweep's own progress bar. Warnings other than the LOAD REPORT still pass."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as hf_logging

PER_LOAD_LOGGERS = ("transformers.modeling_utils", "transformers.configuration_utils",
                    "transformers.generation.configuration_utils", "transformers.tokenization_utils_base")


class DropLoadOutput(logging.Filter):
    """Drops transformers' ``LOAD REPORT`` record and every record below WARNING from the logger it is on.

    A filter, not a level: raising ``transformers.modeling_utils``'s level would make transformers 5.x log a
    "layers were not sharded" list, which it checks on that level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg) and record.levelno >= logging.WARNING


@contextmanager
def quiet_loads(enabled: bool = True) -> Iterator[None]:
    """While active, :class:`DropLoadOutput` sits on every logger of :data:`PER_LOAD_LOGGERS`; removed afterwards."""
    loggers = [hf_logging.get_logger(name) for name in PER_LOAD_LOGGERS] if enabled else []
    drop = DropLoadOutput()
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)
