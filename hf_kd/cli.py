"""``hf-kd``: the command-line entry point, with sub-commands.

    hf-kd --help | --version
    hf-kd reproduce                              # the paper's protocol in miniature (tiny preset, offline)
    hf-kd reproduce --corpus my_text.jsonl       # the same on your own text (.txt or .jsonl with a "text" field)
    hf-kd reproduce --preset bert-base-c4        # print the real-scale commands (--launch runs them)
    hf-kd reproduce --task vision                # the same protocol with the ResNet loop (digits default)
    hf-kd cache-teacher --task mlm ...           # teacher outputs computed once, for students to read (docs/cache.md)

Sub-commands are imported only when run, so ``--help`` and ``--version`` answer without loading torch.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .core.cli_utils import run_cli

DESCRIPTION = """Knowledge distillation that makes Hugging Face training cheaper
(Blakeney et al. 2022, "Reduce, Reuse, Recycle").

other entry points:
  python run_scripts/run_mlm_kd.py --help      MLM pretraining with KD (Trainer; BERT-style students)
  python run_scripts/run_clm_kd.py --help      causal-LM pretraining with KD (Trainer; GPT-2/Llama/Qwen2 students)
  python run_scripts/run_resnet_kd.py --help   image classification with KD (Accelerate)
  hf-kd-glue / hf-kd-glue-sweep / hf-kd-glue-report --help   GLUE fine-tuning, sweep, report
definitions (objective, stop step, cost keys, speed-ups): docs/design.md"""
ENVIRONMENT = """environment variables:
  HF_KD_CACHE   folder for trained tokenizers and cached teachers (default ~/.cache/hf_kd)
  HF_KD_DEBUG   set to 1 to show the traceback of user errors too (bugs always show theirs)"""


def reproduce(argv: list[str] | None = None) -> dict | None:
    from .reproduce.cli import reproduce as run  # lazy: the protocols import torch and transformers

    return run(argv)


def cache_teacher(argv: list[str] | None = None):
    from .text.cache_producer import main as run  # lazy, as reproduce

    return run(argv)


# name -> (function taking the remaining argv, one-line help)
COMMANDS = {
    "reproduce": (reproduce, "the paper's protocol in miniature: teachers, students, speed-ups, report "
                             "(hf-kd reproduce --help)"),
    "cache-teacher": (cache_teacher, "run the teacher(s) once over a training stream and store top-k targets for "
                                     "later students (hf-kd cache-teacher --help; docs/cache.md)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-kd", description=DESCRIPTION, epilog=ENVIRONMENT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hf-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, text) in COMMANDS.items():
        # add_help=False: the sub-command's own parser answers --help with its flags and prog name.
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        run = COMMANDS[argv[0]][0]
        return run_cli(lambda: run(argv[1:]))
    parser = build_parser()
    try:
        parser.parse_args(argv)  # --help / --version exit 0 here; an unknown command exits 2
    except SystemExit as e:
        return int(e.code or 0)
    parser.print_usage(sys.stderr)
    print("hf-kd: error: a command is required (hf-kd --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
