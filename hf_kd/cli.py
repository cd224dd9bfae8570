"""``hf-kd``: command-line entry point. Sub-commands: ``reproduce``.

    hf-kd reproduce                              # the paper's protocol in miniature (tiny preset, offline)
    hf-kd reproduce --corpus ../shared/data/c4/c4-train.00000-of-01024.head1000.jsonl
    hf-kd reproduce --preset bert-base-c4        # print the real-scale commands (--launch runs them)
    hf-kd reproduce --task vision                # the same protocol with the ResNet loop (digits default)
"""

from __future__ import annotations

import sys

from .core.cli_utils import run_cli


def reproduce(argv: list[str] | None = None) -> dict | None:
    from .reproduce.cli import reproduce as run  # lazy: the protocols import torch and transformers

    return run(argv)


COMMANDS = {"reproduce": reproduce}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: hf-kd {{{','.join(COMMANDS)}}} [flags]  (hf-kd reproduce --help)", file=sys.stderr)
        return 2
    cmd = COMMANDS[argv[0]]
    return run_cli(lambda: cmd(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
