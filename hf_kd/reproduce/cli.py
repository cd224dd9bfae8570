"""``hf-kd reproduce``: its arguments and the dispatch to the text, vision or real-scale protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.cli_utils import UserError, parse_args


@dataclass
class ReproduceArguments:
    preset: str = field(default="tiny", metadata={"help": "'tiny' (offline, ~15 min on 2 CPU cores) or "
                                                          "'bert-base-c4' (the real-scale protocol)."})
    task: str = field(default="text", metadata={"help": "'text' (MLM) or 'vision' (ResNet on digits)."})
    corpus: str | None = field(default=None, metadata={"help": "Local .txt/.jsonl to use instead of the built-in "
                                                                "corpus (tiny preset)."})
    seeds: int = field(default=1, metadata={"help": "Repeat the runs with this many seeds (0..N-1): spread."})
    output_dir: str = field(default="runs/reproduce", metadata={"help": "Where results.json/.md and PNGs go."})
    steps: int | None = field(default=None, metadata={"help": "Override the students' step budget (teachers scale "
                                                               "with it); for quick looks, not for claims."})
    only: list[str] | None = field(default=None, metadata={"help": "Run only these variants (and the baseline)."})
    launch: bool = field(default=False, metadata={"help": "bert-base-c4: run the printed commands."})
    rerender: bool = field(default=False, metadata={"help": "Only rebuild results.md/.json and the plots of a "
                                                            "finished --output_dir from its runs' logs."})


def reproduce(argv: list[str] | None = None) -> dict | None:
    (a,) = parse_args((ReproduceArguments,), argv, prog="hf-kd reproduce")
    if a.seeds < 1:
        raise UserError(f"--seeds {a.seeds} is invalid: expected an integer >= 1")
    if a.preset not in ("tiny", "bert-base-c4"):
        raise UserError(f"--preset {a.preset!r} is invalid: expected 'tiny' or 'bert-base-c4'")
    if a.rerender:
        from .report import rerender

        results = rerender(a.output_dir)
    elif a.preset == "bert-base-c4":
        from .scale import bert_base_c4

        results = bert_base_c4(a.output_dir, launch=a.launch)
    elif a.task == "vision":
        from .vision import run_vision

        results = run_vision(a.output_dir, seeds=a.seeds)
    elif a.task == "text":
        from dataclasses import replace

        from .text import TinyPreset, run_tiny

        p = TinyPreset()
        if a.steps:
            k = a.steps / p.steps
            p = replace(p, steps=a.steps, eval_every=max(1, int(p.eval_every * k)),
                        good_teacher_steps=int(p.good_teacher_steps * k),
                        second_teacher_steps=int(p.second_teacher_steps * k),
                        poor_teacher_steps=max(1, int(p.poor_teacher_steps * k)))
        results = run_tiny(a.output_dir, a.corpus, a.seeds, p, a.only)
    else:
        raise UserError(f"--task {a.task!r} is invalid: expected 'text' or 'vision'")
    print(results["markdown"])
    if results["plots"]:
        print(f"results: {a.output_dir}/results.json, {a.output_dir}/results.md, plots: {', '.join(results['plots'])}")
    return results
