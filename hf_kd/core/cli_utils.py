"""Shared plumbing for the entry points: argument parsing, config files, logging and one-line user errors.

* :func:`parse_args` -- ``HfArgumentParser`` over the entry point's dataclasses, with ``--config FILE``
  (YAML or JSON) whose values the flags on the command line override, as TRL's ``--config`` does. It also
  sets the log levels from the ``TrainingArguments`` it parsed, as transformers' ``run_mlm.py`` does.
* :func:`run_cli` -- runs an entry point: a user error (bad flag, bad file) becomes one ``error: ...`` line
  and exit status 2, a diverged run exit status 1; any other exception is a bug and keeps its traceback.
  ``HF_KD_DEBUG=1`` shows the traceback of user errors too.

This module imports neither torch nor transformers at import time: ``hf-kd --help`` must answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, Interrupted, NonFiniteLossError, UserError

logger = logging.getLogger("hf_kd")

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Loggers of this project: they follow the process log level like transformers' and datasets' do.
PROJECT_LOGGERS = ("hf_kd", "glue_eval", "run_scripts", "__main__")
# Our code lives here; a generic exception (ValueError, FileNotFoundError) raised from these folders is a
# message we wrote for the user; raised anywhere else (torch, transformers, the stdlib) it is a bug or an
# environment problem and keeps its traceback.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_PROJECT_DIRS = tuple(str(_PROJECT_ROOT / d) + os.sep for d in ("hf_kd", "glue_eval", "run_scripts", "examples"))
_GENERIC_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that always mean "bad input": one line, exit status 2 (imported lazily: they pull torch)."""
    from .hub import HubPushError
    from .teachers import ModelLoadError  # TeacherLoadError included

    return (UserError, DataError, ModelLoadError, HubPushError)


def make_parser(dataclass_types: Sequence[type], prog: str | None = None):
    """An ``HfArgumentParser`` whose errors are one :class:`UserError` line (argparse prints the whole usage)."""
    from transformers import HfArgumentParser

    class OneLineErrorParser(HfArgumentParser):
        def error(self, message: str):
            raise UserError(f"{_readable_choice_error(message)} (see --help)")

    parser = OneLineErrorParser(dataclass_types, prog=prog)
    # Shown in --help only: split_config() takes --config out of argv before argparse sees it.
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML or JSON file of arguments (flag name: value); flags given on the command line "
                        "override it. A lone FILE.yaml/.json argument works too.")
    _group_trainer_flags_last(parser, dataclass_types)
    return parser


def _group_trainer_flags_last(parser, dataclass_types: Sequence[type]) -> None:
    """In ``--help``, this project's flags (model, data, ``kd_*``, ...) come first under their own heading, and the
    ~100 flags inherited from ``transformers.TrainingArguments`` after them: otherwise the ``kd_*`` flags start
    some 700 lines down. Only the help layout changes; parsing is the same."""
    from transformers import TrainingArguments

    if not any(isinstance(t, type) and issubclass(t, TrainingArguments) for t in dataclass_types):
        return
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    parser.usage = "%(prog)s [--config FILE] [FLAGS]  (hf-kd's own flags are listed first, then TrainingArguments')"
    ours = parser.add_argument_group("hf-kd options (model, data, knowledge distillation)")
    theirs = parser.add_argument_group("transformers TrainingArguments (optimiser, schedule, precision, logging, "
                                       "saving, Hub, ...)")
    default = parser._optionals
    for action in list(default._group_actions):
        if action.dest == "help":
            continue
        (theirs if action.dest in inherited else ours)._group_actions.append(action)
        default._group_actions.remove(action)


def _readable_choice_error(message: str) -> str:
    """argparse's "argument --x: invalid choice: 'v' (choose from ...)" in the project's wording."""
    m = re.match(r"argument --(\w+)(?:/[^:]*)?: invalid choice: (.+?) \(choose from (.*)\)$", message)
    if not m:
        return message
    allowed = tuple(v.strip().strip("'") for v in m.group(3).split(","))
    return f"{m.group(1)}={m.group(2)} is invalid: expected one of {allowed}"


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON file of arguments -> ``{flag name: value}``; a bad file is one :class:`UserError` line."""
    p = Path(path)
    if p.suffix not in CONFIG_SUFFIXES:
        raise UserError(f"config file {path!r} has suffix {p.suffix!r}; expected one of {CONFIG_SUFFIXES}")
    if not p.is_file():
        raise UserError(f"config file {path!r} does not exist")
    text = p.read_text()
    if p.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"config file {path!r} is not valid JSON ({e.msg} at line {e.lineno})") from e
    else:
        import yaml  # PyYAML: a dependency of transformers

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"config file {path!r} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(values, dict):
        raise UserError(f"config file {path!r} holds a {type(values).__name__}; expected a mapping of flag names "
                        "to values")
    return values


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` (anywhere) or a leading ``FILE.yaml|.json`` -> (file, the remaining flags)."""
    rest = list(argv)
    for i, a in enumerate(rest):
        if a == "--config":
            if i + 1 >= len(rest):
                raise UserError("--config needs a file: --config FILE.yaml (or .json)")
            return rest[i + 1], rest[:i] + rest[i + 2:]
        if a.startswith("--config="):
            return a.split("=", 1)[1], rest[:i] + rest[i + 1:]
    if rest and not rest[0].startswith("-") and rest[0].endswith(CONFIG_SUFFIXES):
        return rest[0], rest[1:]
    return None, rest


def given_flags(argv: list[str] | None = None) -> set[str]:
    """Names of the flags set explicitly, on the command line or in its ``--config`` file (``learning_rate`` for
    ``--learning_rate 1e-3`` or ``--learning_rate=1e-3``): a parsed value cannot tell a typed default from none."""
    config, rest = split_config(list(sys.argv[1:] if argv is None else argv))
    names = {a[2:].split("=", 1)[0] for a in rest if a.startswith("--")}
    return names | set(read_config_file(config)) if config is not None else names


def _apply_config(parser, path: str) -> None:
    """Make the file's values the parser's defaults, so command-line flags override them (TRL's ``--config``)."""
    values = read_config_file(path)
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"config file {path!r}: unknown argument {unknown[0]!r}; expected flag names as in --help")
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # given by the file


def parse_args(dataclass_types: Sequence[type], argv: list[str] | None = None, prog: str | None = None) -> tuple:
    """Parse ``argv`` into ``dataclass_types``; ``--config FILE`` (or a leading ``FILE.yaml|.json``) gives defaults.

    A value rejected while the dataclasses are built (their ``__post_init__`` checks) is a user error. When
    one of them is a ``TrainingArguments``, the log levels follow its ``--log_level``/``--log_level_replica``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(dataclass_types, prog=prog)
    config, argv = split_config(argv)
    if config is not None:
        _apply_config(parser, config)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(str(e).strip() or type(e).__name__) from e
    for obj in parsed:
        if hasattr(obj, "get_process_log_level"):
            configure_logging_from_training_args(obj)
    return parsed


# -- logging -------------------------------------------------------------------------------------------------
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | None = None) -> None:
    """Before the flags are known: INFO on the main process (``RANK`` 0 or unset), WARNING on the others."""
    if level is None:
        level = logging.INFO if int(os.environ.get("RANK", "0") or 0) == 0 else logging.WARNING
    logging.basicConfig(format=LOG_FORMAT, level=level)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


def configure_logging(level: int) -> None:
    """This project's, transformers' and datasets' loggers at ``level``."""
    import datasets
    import transformers

    logging.basicConfig(format=LOG_FORMAT)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    datasets.utils.logging.set_verbosity(level)


def configure_logging_from_training_args(args) -> int:
    """``run_mlm.py``'s recipe: the main process logs at ``--log_level`` (INFO when left ``passive``), the other
    ranks at ``--log_level_replica`` (WARNING by default). Returns the level set."""
    import transformers

    if args.should_log and args.log_level == "passive":
        transformers.utils.logging.set_verbosity_info()
    level = args.get_process_log_level()
    configure_logging(level)
    return level


# -- running an entry point ----------------------------------------------------------------------------------
def raised_by_project(e: BaseException) -> bool:
    """Whether the innermost frame that raised ``e`` is in this project's code (not torch, transformers, ...)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PROJECT_DIRS)


def is_user_error(e: BaseException) -> bool:
    """Our own error types always; a ValueError/FileNotFoundError/FileExistsError only when our code raised it."""
    if isinstance(e, user_error_types()):
        return True
    return isinstance(e, _GENERIC_USER_ERRORS) and raised_by_project(e)


def quiet_deepspeed_autodetect() -> None:
    """With no GPU, tell DeepSpeed it runs on the CPU so it does not warn so at every run.

    Accelerate imports DeepSpeed whenever it is installed (the dev extra), used or not, and DeepSpeed's device
    auto-detection then prints "Setting accelerator to CPU ..." -- the choice it makes anyway. An explicit
    ``DS_ACCELERATOR`` is left alone.
    """
    if "DS_ACCELERATOR" in os.environ or importlib.util.find_spec("deepspeed") is None:
        return
    import torch

    if torch.cuda.device_count() == 0:  # NVML-based: does not initialise CUDA
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_cli(main: Callable[[], object]) -> int:
    """Run ``main``: 0 on success; a user error -> ``error: <one line>`` on stderr and 2; a diverged run -> 1.

    Any other exception (a bug) propagates with its traceback. ``HF_KD_DEBUG=1`` re-raises user errors too.
    """
    setup_logging()
    quiet_deepspeed_autodetect()
    try:
        main()
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback (a training run says how to resume)
        if os.environ.get("HF_KD_DEBUG"):
            raise
        print(str(e) if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except Exception as e:
        if not (isinstance(e, NonFiniteLossError) or is_user_error(e)) or os.environ.get("HF_KD_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        # 1 = training failed (diverged), 2 = bad usage or input, like argparse.
        return 1 if isinstance(e, NonFiniteLossError) else 2
    return 0
