"""``hf-kd reproduce``: its arguments and the dispatch to the text, vision or real-scale protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.cli_utils import UserError, parse_args


@dataclass
class ReproduceArguments:
    preset: str = field(default="tiny", metadata={"help": "'tiny' (offline, CPU; see README for its time) or "
                                                          "'bert-base-c4' (the real-scale protocol)."})
    task: str = field(default="text", metadata={"help": "'text' (MLM) or 'vision' (ResNet on digits)."})
    corpus: str | None = field(default=None, metadata={"help": "Local .txt/.jsonl to use instead of the built-in "
                                                                "corpus (tiny preset)."})
    seeds: int = field(default=3, metadata={"help": "Run every variant with seeds 0..N-1; speed-ups are paired per "
                                                    "seed and verdicts need the spread (1 seed: inconclusive)."})
    full: bool = field(default=False, metadata={"help": "Run every variant (adds the poor teacher, the ensembles "
                                                        "and the 0.5x frontier point) instead of the default set."})
    workers: int = field(default=2, metadata={"help": "Trainings run side by side in this many processes."})
    threads: int = field(default=1, metadata={"help": "Torch threads per training process."})
    output_dir: str = field(default="runs/reproduce", metadata={"help": "Where results.json/.md and PNGs go."})
    steps: int | None = field(default=None, metadata={"help": "Override the students' step budget (teachers scale "
                                                               "with it); for quick looks, not for claims."})
    only: list[str] | None = field(default=None, metadata={"help": "Run only these variants (and the baseline); "
                                                                   "an unknown name is an error listing them."})
    launch: bool = field(default=False, metadata={"help": "bert-base-c4: run the printed commands."})
    rerender: bool = field(default=False, metadata={"help": "Only rebuild results.md/.json and the plots of a "
                                                            "finished --output_dir from its runs' logs."})


def reproduce(argv: list[str] | None = None) -> dict | None:
    (a,) = parse_args((ReproduceArguments,), argv)
    for flag in ("seeds", "workers", "threads"):
        if getattr(a, flag) < 1:
            raise UserError(f"--{flag} {getattr(a, flag)} is invalid: expected an integer >= 1")
    if a.preset not in ("tiny", "bert-base-c4"):
        raise UserError(f"--preset {a.preset!r} is invalid: expected 'tiny' or 'bert-base-c4'")
    if a.rerender:
        from .report import rerender

        results = rerender(a.output_dir)
    elif a.preset == "bert-base-c4":
        from .scale import bert_base_c4

        results = bert_base_c4(a.output_dir, launch_it=a.launch)
    elif a.task == "vision":
        from .vision import run_vision

        results = run_vision(a.output_dir, seeds=a.seeds, only=a.only, full=a.full)
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
        results = run_tiny(a.output_dir, a.corpus, a.seeds, p, a.only, full=a.full, workers=a.workers,
                           threads=a.threads)
    else:
        raise UserError(f"--task {a.task!r} is invalid: expected 'text' or 'vision'")
    print(results["markdown"])
    if results["plots"]:
        print(f"results: {a.output_dir}/results.json, {a.output_dir}/results.md, plots: {', '.join(results['plots'])}")
    return results
