"""Shared plumbing for the thin entry scripts: argument parsing and one-line user errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import HfArgumentParser

from .errors import DataError, NonFiniteLossError, UserError
from .hub import HubPushError
from .teachers import TeacherLoadError

logger = logging.getLogger("hf_kd")

# Errors caused by what the user passed: reported as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, DataError, TeacherLoadError, json.JSONDecodeError,
               HubPushError)


class _OneLineErrorParser(HfArgumentParser):
    """argparse prints the whole usage text on a bad flag; a user needs the one line that says what is wrong."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def parse_args(dataclass_types: Sequence[type], argv: list[str] | None = None) -> tuple:
    """``HfArgumentParser`` over ``dataclass_types``; a single ``*.json`` argument is read as a file of arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _OneLineErrorParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise UserError(f"arguments file {argv[0]!r} does not exist")
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"arguments file {argv[0]!r} is not valid JSON ({e.msg} at line {e.lineno})") from e
        return parser.parse_json_file(json_file=str(path), allow_extra_keys=False)
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)


def run_cli(main: Callable[[], object]) -> int:
    """Run ``main``; user errors become ``error: <one line>`` on stderr and exit status 2, a diverged run 1."""
    setup_logging()
    try:
        main()
    except (*USER_ERRORS, NonFiniteLossError) as e:
        if os.environ.get("HF_KD_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        # 1 = training failed (diverged), 2 = bad usage or input, like argparse.
        return 1 if isinstance(e, NonFiniteLossError) else 2
    return 0
